"""The on-device gallery directory: verified versions, an atomic ``current`` switch,
the previous version kept for rollback, and recovery after a power cut.

    DIR/versions/<version>/   complete, verified full bundles (at most ``keep`` of them)
    DIR/current -> versions/<version>    the gallery the pipeline runs on
    DIR/previous -> versions/<version>   the last good one before it
    DIR/staging/              bundles being assembled (deleted on recovery)
    DIR/downloads/            partial downloads, kept so the next sync resumes

Every step that matters is a rename (a symlink replaced with ``os.replace``, a staged
directory renamed into ``versions/``) followed by a directory fsync, so after a
crash at any instant ``current`` names either the old or the new complete gallery.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from edge_app.gallery.bundle import BundleContents, BundleError, fsync_dir, load_bundle

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PUBLIC_KEY_ENV = "MPD_GALLERY_PUBLIC_KEY"


def load_public_key(source: str | Path | bytes):
    """An Ed25519 public key from a PEM file path or PEM bytes (the only key a device holds)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if isinstance(source, bytes):
        pem, origin = source, "<PEM>"
    else:
        try:
            pem, origin = Path(source).read_bytes(), str(source)
        except OSError as error:
            raise BundleError(f"cannot read gallery public key {source}: {error.strerror or error}") from None
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError) as error:
        raise BundleError(f"{origin}: not a PEM public key: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{origin}: the key is {type(key).__name__}, an Ed25519 public key is required")
    return key


def check_version_name(version: str) -> str:
    if not VERSION_PATTERN.match(version):
        raise BundleError(f"gallery version {version!r} is not a safe directory name")
    return version


class GalleryDir:
    """One device's installed galleries. Not thread-safe: one sync agent owns it."""

    def __init__(self, root: Path, public_key, keep: int = 2) -> None:
        self.root = Path(root)
        self.public_key = public_key
        self.keep = max(keep, 2)  # current and previous at least
        self.versions = self.root / "versions"
        self.staging = self.root / "staging"
        self.downloads = self.root / "downloads"
        self.recovered: BundleContents | None = None  # the gallery recover() verified and loaded
        for directory in (self.versions, self.staging, self.downloads):
            directory.mkdir(parents=True, exist_ok=True)

    # --- reading -----------------------------------------------------------------

    def _link(self, name: str) -> str | None:
        try:
            return Path(os.readlink(self.root / name)).name
        except (FileNotFoundError, OSError):
            return None

    def current_version(self) -> str | None:
        return self._link("current")

    def previous_version(self) -> str | None:
        return self._link("previous")

    def path_of(self, version: str) -> Path:
        return self.versions / check_version_name(version)

    def load(self, version: str | None = None) -> BundleContents:
        """Verify (signature and every file) and load a version, by default the current one."""
        version = version or self.current_version()
        if version is None:
            raise BundleError(f"{self.root}: no gallery installed yet")
        return load_bundle(self.path_of(version), self.public_key, require_signature=True)

    def installed_versions(self) -> list[str]:
        return sorted(p.name for p in self.versions.iterdir() if p.is_dir())

    # --- changing ----------------------------------------------------------------

    def new_staging(self, name: str) -> Path:
        path = self.staging / check_version_name(name)
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def install(self, staged: Path, version: str) -> Path:
        """Move a verified staged bundle into ``versions/`` and make it current."""
        target = self.path_of(version)
        if target.exists():
            # Same version again (e.g. a re-sync after a rollback): the new copy was just verified.
            shutil.rmtree(target)
        fsync_dir(staged)
        os.rename(staged, target)
        fsync_dir(self.versions)
        fsync_dir(self.staging)
        self.switch(version)
        self.prune()
        return target

    def switch(self, version: str) -> None:
        """Make ``version`` current, remembering the old current as previous."""
        old = self.current_version()
        if old == version:
            return
        if old is not None:
            self._set_link("previous", old)
        self._set_link("current", version)
        log.info("gallery: current is now %s (previous %s)", version, old)

    def rollback(self) -> str | None:
        """Go back to the previous version; returns the version now current."""
        previous, current = self.previous_version(), self.current_version()
        if previous is None or not self.path_of(previous).is_dir():
            log.error("gallery: no previous version to roll back to; staying on %s", current)
            return current
        self._set_link("current", previous)
        if current is not None:
            self._set_link("previous", current)
        log.warning("gallery: rolled back from %s to %s", current, previous)
        return previous

    def _set_link(self, name: str, version: str) -> None:
        tmp = self.root / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(Path("versions") / check_version_name(version), tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def prune(self) -> None:
        """Delete versions beyond ``keep``, never current or previous."""
        pinned = {self.current_version(), self.previous_version()}
        others = sorted(
            (p for p in self.versions.iterdir() if p.is_dir() and p.name not in pinned),
            key=lambda p: p.stat().st_mtime,
        )
        for path in others[: max(0, len(others) - (self.keep - len(pinned - {None})))]:
            shutil.rmtree(path, ignore_errors=True)

    def recover(self) -> str | None:
        """After a restart (maybe a power cut): drop half-made work, make ``current`` a good gallery.

        Returns the version now current, or None when no valid gallery is on disk.
        """
        for leftover in self.staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink()
        for name in (".current.tmp", ".previous.tmp"):
            (self.root / name).unlink(missing_ok=True)
        candidates = [self.current_version(), self.previous_version()]
        newest_first = sorted(self.installed_versions(), key=lambda v: self.path_of(v).stat().st_mtime, reverse=True)
        candidates += newest_first
        current = self.current_version()
        self.recovered = None
        for version in dict.fromkeys(v for v in candidates if v):
            try:
                self.recovered = self.load(version)  # kept: the caller needs it loaded anyway
            except BundleError as error:
                log.error("gallery: installed version %s is not usable, skipping it: %s", version, error)
                continue
            if version != current:
                log.warning("gallery: recovered onto %s (current was %s)", version, current)
                self._set_link("current", version)
            return version
        if current is not None:
            log.error("gallery: no valid gallery on disk under %s", self.root)
        return None
