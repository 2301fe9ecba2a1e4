"""The device's gallery sync agent: keeps the device on the newest good gallery.

Each sync: read the small ``latest.json`` pointer; if it names a newer version,
fetch the signed manifest first (a wrong signature, another embedder or a delta
for another base is refused before any large download), download every file with
HTTP Range resume, verify sizes and sha256s, apply the delta (or take the full
bundle), install it atomically on disk and swap it into the running pipeline.
Any failure leaves the device on its last good gallery with one clear log line;
partial downloads stay on disk so the next sync resumes them.

Where bytes come from is ``transports.py``; the pointer is ``pointer.py``; the MQTT
announcement listener is ``announcements.py``; ``mpd sync`` is ``cli.py``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import requests
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from edge_app.gallery.bundle import (
    MANIFEST,
    SIGNATURE,
    BundleContents,
    BundleError,
    Manifest,
    ModelRef,
    load_bundle,
    read_manifest,
    sha256_file,
    verify_files,
)
from edge_app.gallery.delta import GalleryData, apply_delta, write_applied
from edge_app.gallery.install import GalleryDir, check_version_name
from edge_app.gallery.pointer import (
    ANNOUNCE_TOPIC,
    MAX_POINTER_BYTES,
    POINTER,
    DeltaRef,
    LatestPointer,
    PointerError,
)
from edge_app.gallery.transports import RETRYABLE, DiskFull, IncompleteDownload, Source, SyncError, open_source

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 1024 * 1024
DEFAULT_KEEP_FREE = 64 * 1024 * 1024
RETRY_SOON_S = 60.0  # after a sync cut by its deadline that made progress


SYNC_NICE = 10  # the sync thread's niceness: the frame loop gets the CPU first


def lower_thread_priority(nice: int = SYNC_NICE) -> None:
    """Make the calling thread yield the CPU to the frame loop (Linux: niceness is per thread).

    Raising niceness needs no privilege; on other systems this does nothing.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError) as error:
        log.debug("gallery: cannot lower the sync thread's priority: %s", error)


def device_embedder() -> ModelRef:
    """The embedder this device runs (the builder records the same ref in every manifest)."""
    from models import weights

    return ModelRef(id=weights.EMBEDDER.model_id, sha256=weights.EMBEDDER_CLEAN_SHA256)


@dataclass
class SyncResult:
    status: Literal["up_to_date", "installed", "failed"]
    version: str | None  # the version current after this sync
    detail: str = ""
    retry_soon: bool = False  # cut by the deadline after progress: resume before the next interval


class SyncAgent:
    """Keeps ``gallery_dir`` on the newest good gallery from ``source`` and hands each new
    one to ``on_swap`` (the pipeline's live gallery holder)."""

    def __init__(
        self,
        source: str | Source,
        gallery_dir: Path,
        public_key,
        *,
        embedder: ModelRef | None = None,
        on_swap: Callable[[BundleContents], None] | None = None,
        interval: float = 3600.0,
        attempts: int = 8,
        max_wait: float = 30.0,
        sync_deadline_s: float = 3600.0,
        request_deadline_s: float = 60.0,
        keep_free_bytes: int = DEFAULT_KEEP_FREE,
    ) -> None:
        """``sync_deadline_s`` bounds one whole sync (every request and download in it: what
        arrived is kept and the next sync resumes); ``request_deadline_s`` bounds each small
        read (pointer, manifest). ``keep_free_bytes``: a download never leaves less free on
        the gallery's disk (room for the outbox and the rest of the device)."""
        self.source = open_source(source) if isinstance(source, str) else source
        self.sync_deadline_s = sync_deadline_s
        self.request_deadline_s = request_deadline_s
        self.keep_free_bytes = keep_free_bytes
        self._deadline = 0.0  # of the sync in progress (monotonic)
        self._progress = 0  # bytes downloaded in the sync in progress
        self.dir = GalleryDir(gallery_dir, public_key)
        self.public_key = public_key
        self.embedder = embedder or device_embedder()
        self.on_swap = on_swap
        self.interval = interval
        self.attempts = attempts
        self.max_wait = max_wait
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last_result: SyncResult | None = None
        self.version = self.dir.recover()
        self._installed: BundleContents | None = self.dir.recovered

    @property
    def current_bundle(self) -> BundleContents | None:
        """The installed gallery, verified and loaded (to start the pipeline with), or None."""
        if self._installed is None and self.version is not None:
            self._installed = self.dir.load(self.version)
        return self._installed

    # --- running in the device pipeline --------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gallery-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        lower_thread_priority()  # verifying and applying a gallery must not cost frames
        while not self._stop.is_set():
            try:
                self.sync_once()
            except Exception:  # noqa: BLE001 - the agent thread must outlive any one bad sync
                log.exception("gallery sync failed unexpectedly, staying on %s", self.version)
            # A slow link cut by the deadline resumes soon rather than an interval later.
            retry_soon = self.last_result is not None and self.last_result.retry_soon
            self._wake.wait(min(self.interval, RETRY_SOON_S) if retry_soon else self.interval)
            self._wake.clear()

    def announce(self, payload: bytes | str) -> None:
        """An MQTT announcement on ``mpd/gallery/latest``: sync now if it names another version.

        The payload is only a hint; the agent still reads the pointer from the source.
        """
        try:
            pointer = LatestPointer.parse(payload, f"MQTT {ANNOUNCE_TOPIC}")
        except PointerError as error:
            log.warning("gallery: ignoring announcement: %s", error)
            return
        if pointer.gallery_version != self.version:
            log.info("gallery: announcement of %s, syncing", pointer.gallery_version)
            self._wake.set()

    # --- one sync --------------------------------------------------------------------

    def sync_once(self) -> SyncResult:
        with self._lock:
            self._deadline = time.monotonic() + self.sync_deadline_s
            self._progress = 0  # bytes downloaded in this sync
            try:
                result = self._sync()
            except DiskFull as error:
                result = self._disk_full(error)
            except (SyncError, BundleError, requests.RequestException) as error:
                result = SyncResult("failed", self.version, str(error))
                result.retry_soon = self._progress > 0 and time.monotonic() > self._deadline
                log.error("gallery sync failed, staying on %s: %s", self.version or "no gallery", error)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    result = self._disk_full(error)
                else:
                    result = SyncResult("failed", self.version, f"disk error: {error}")
                    log.error("gallery sync failed, staying on %s: %s", self.version or "no gallery", result.detail)
            finally:
                self._clear_staging()  # staged galleries are either installed (renamed away) or abandoned
            self.last_result = result
            return result

    def _disk_full(self, error: Exception) -> SyncResult:
        # Partial files would keep the disk full for everything else (the outbox first).
        shutil.rmtree(self.dir.downloads, ignore_errors=True)
        self.dir.downloads.mkdir(exist_ok=True)
        self._clear_staging()
        detail = f"disk full, partial downloads removed: {error}"
        log.error("gallery sync failed, staying on %s: %s", self.version or "no gallery", detail)
        return SyncResult("failed", self.version, detail)

    def _read_small(self, relpath: str, limit: int) -> bytes:
        deadline = min(self._deadline, time.monotonic() + self.request_deadline_s)
        return self._retrying(self.source.read_small, relpath, limit, deadline)

    def _sync(self) -> SyncResult:
        pointer = LatestPointer.parse(self._read_small(POINTER, MAX_POINTER_BYTES), POINTER)
        target = check_version_name(pointer.gallery_version)
        if target == self.version:
            return SyncResult("up_to_date", self.version)
        fetched = None
        delta = next((ref for ref in pointer.all_deltas() if self.version and ref.base_version == self.version), None)
        if delta is not None:
            try:
                fetched = self._fetch_delta(pointer, delta)
            except DiskFull:
                raise  # the full bundle is bigger still
            except (SyncError, BundleError) as error:
                if time.monotonic() > self._deadline:
                    raise
                log.warning("gallery: delta %s -> %s unusable, fetching the full bundle: %s",
                            self.version, target, error)  # fmt: skip
        if fetched is None:
            fetched = self._fetch_full(pointer)
        staged, contents = fetched
        self.dir.install(staged, target)
        self._swap_in(contents.model_copy(update={"path": self.dir.path_of(target)}))
        self._forget_downloads()
        log.info("gallery: installed %s (%d vectors, %d persons)", target, len(contents.labels), len(contents.persons))
        return SyncResult("installed", self.version)

    def _swap_in(self, contents: BundleContents) -> None:
        previous = self.version
        self.version = contents.manifest.gallery_version
        self._installed = contents
        if self.on_swap is None:
            return
        try:
            self.on_swap(contents)
        except Exception as error:
            self.dir.rollback()
            self.version = self.dir.current_version()
            self._installed = None
            raise SyncError(f"the pipeline refused gallery {contents.manifest.gallery_version}, "
                            f"rolled back to {previous}: {error}") from error  # fmt: skip

    def _check_not_older(self, manifest: Manifest) -> None:
        if self.version is None:
            return
        current = read_manifest(self.dir.path_of(self.version))
        if manifest.created_at <= current.created_at:
            raise SyncError(
                f"gallery {manifest.gallery_version} ({manifest.created_at:%Y-%m-%dT%H:%M:%SZ}) is not newer than "
                f"installed {self.version} ({current.created_at:%Y-%m-%dT%H:%M:%SZ}); refusing to go back"
            )

    def _fetch_full(self, pointer: LatestPointer) -> tuple[Path, BundleContents]:
        work = self._download(pointer.full, f"{pointer.gallery_version}-full", "full", pointer)
        return work, load_bundle(work, self.public_key, require_signature=True)

    def _fetch_delta(self, pointer: LatestPointer, ref: DeltaRef) -> tuple[Path, BundleContents]:
        work = self._download(ref.path, f"{pointer.gallery_version}-delta-{ref.base_version}"[:64], "delta", pointer)
        delta = load_bundle(work, self.public_key, require_signature=True)
        base = self._current_data()
        staged = self.dir.new_staging(pointer.gallery_version)
        result = apply_delta(base, delta)
        # The rebuilt gallery is written beside the installed ones: it must not eat the reserve either.
        estimate = result.vectors.nbytes + 256 * (len(result.labels) + len(result.persons))
        self._require_free(staged, estimate, f"gallery {pointer.gallery_version}")
        write_applied(staged, result, work)
        # The rebuilt files must be exactly those the cloud signed for the full bundle.
        rebuilt = read_manifest(staged, self.public_key, require_signature=True)
        if rebuilt.gallery_version != pointer.gallery_version or rebuilt.kind != "full":
            raise BundleError(f"delta carries the manifest of {rebuilt.gallery_version}, not {pointer.gallery_version}")
        try:
            verify_files(staged, rebuilt)
        except BundleError as error:
            raise BundleError(f"applying the delta did not reproduce the signed full gallery: {error}") from None
        # Byte-identical to the verified files, so the arrays in hand are what a reload would give.
        contents = BundleContents(
            manifest=rebuilt,
            vectors=result.vectors,
            labels=result.labels,
            persons={p.person_id: p for p in result.persons},
            path=staged,
        )
        return staged, contents

    def _current_data(self) -> GalleryData:
        """The installed gallery, verified; kept from the last install so a delta needs no reload."""
        cached = self._installed
        if cached is None or cached.manifest.gallery_version != self.version:
            cached = self.dir.load(self.version)
        return GalleryData.from_bundle(cached)

    def _download(self, relpath: str, work_name: str, kind: str, pointer: LatestPointer) -> Path:
        """Fetch one bundle into ``downloads/<work_name>``: manifest first, then the files."""
        work = self.dir.downloads / check_version_name(work_name)
        work.mkdir(parents=True, exist_ok=True)
        manifest_bytes = self._read_small(relpath + MANIFEST, MAX_MANIFEST_BYTES)
        signature = self._read_small(relpath + SIGNATURE, 4096)
        (work / MANIFEST).write_bytes(manifest_bytes)
        (work / SIGNATURE).write_bytes(signature)
        manifest = read_manifest(work, self.public_key, require_signature=True)
        self._check_manifest(manifest, kind, pointer)
        self._check_space(work, manifest)
        for name, entry in manifest.files.items():
            if "/" in name or name.startswith("."):
                raise BundleError(f"{relpath}{MANIFEST}: file name {name!r} is not allowed")
            final = work / name
            if final.is_file() and final.stat().st_size == entry.size and sha256_file(final) == entry.sha256:
                continue
            part = work / f"{name}.part"
            if part.exists() and part.stat().st_size > entry.size:
                part.unlink()
            self._resuming(relpath + name, part, entry.size)
            digest = sha256_file(part)
            if digest != entry.sha256:
                part.unlink()
                raise BundleError(
                    f"{self.source.name}{relpath}{name}: sha256 {digest} does not match the signed manifest "
                    f"(tampered or corrupted); discarded, will download again"
                )
            os.replace(part, final)
        return work

    def _download_file(self, relpath: str, part: Path, size: int) -> None:
        self.source.download(relpath, part, size, deadline=self._deadline, keep_free=self.keep_free_bytes)
        have = part.stat().st_size if part.exists() else 0
        if have < size:
            raise IncompleteDownload(f"{relpath}: {have} of {size} bytes, connection ended")
        if have > size:
            part.unlink()
            raise SyncError(f"{self.source.name}{relpath} is {have} bytes, the signed manifest says {size}")

    def _check_manifest(self, manifest: Manifest, kind: str, pointer: LatestPointer) -> None:
        if not manifest.embedder_compatible(self.embedder):
            raise BundleError(
                f"gallery {manifest.gallery_version} was built with embedder {manifest.embedder.id} "
                f"({manifest.embedder.sha256[:12]}), this device runs {self.embedder.id} "
                f"({self.embedder.sha256[:12]}): refused"
            )
        if manifest.kind != kind:
            raise BundleError(f"expected a {kind} bundle, got kind={manifest.kind}")
        if manifest.gallery_version != pointer.gallery_version:
            raise BundleError(f"manifest is version {manifest.gallery_version}, pointer says {pointer.gallery_version}")
        self._check_not_older(manifest)
        if kind == "delta" and manifest.base_version != self.version:
            raise BundleError(
                f"delta {manifest.gallery_version} is for base {manifest.base_version}, device holds {self.version}"
            )

    def _check_space(self, work: Path, manifest: Manifest) -> None:
        needed = sum(entry.size for entry in manifest.files.values()) * 2  # download + staged copy
        self._require_free(work, needed, f"gallery {manifest.gallery_version}")

    def _require_free(self, path: Path, needed: int, what: str) -> None:
        free = shutil.disk_usage(path).free
        if free - needed < self.keep_free_bytes:
            raise DiskFull(
                f"not enough disk for {what}: need {needed} bytes and {self.keep_free_bytes} kept free "
                f"for the device, {free} free"
            )

    def _past_deadline(self, state=None) -> bool:
        return time.monotonic() > self._deadline

    def _deadline_error(self, cause: BaseException | None) -> SyncError:
        return SyncError(
            f"sync deadline of {self.sync_deadline_s:.0f} s reached ({self._progress} bytes downloaded, kept for "
            f"the next sync): {cause}"
        )

    def _retrying(self, function, *args):
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(self.attempts) | self._past_deadline,
            wait=wait_exponential(multiplier=0.2, max=self.max_wait),
            reraise=False,
        )
        try:
            return retrying(function, *args)
        except RetryError as error:
            cause = error.last_attempt.exception()
            if self._past_deadline():
                raise self._deadline_error(cause) from None
            raise SyncError(f"gave up after {self.attempts} attempts: {cause}") from None

    def _resuming(self, relpath: str, part: Path, size: int) -> None:
        """Download with resume; on a poor link a big file needs many connections, so only
        attempts that brought no new byte count toward giving up. The sync's deadline ends it."""
        stalled = [0]
        have = [part.stat().st_size if part.exists() else 0]

        def attempt() -> None:
            try:
                self._download_file(relpath, part, size)
            finally:
                now = part.stat().st_size if part.exists() else 0
                self._progress += max(0, now - have[0])
                stalled[0] = 0 if now > have[0] else stalled[0] + 1
                have[0] = now

        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=lambda state: stalled[0] >= self.attempts or self._past_deadline(),
            wait=lambda state: min(self.max_wait, 0.2 * 2 ** max(0, stalled[0] - 1)),
            reraise=False,
        )
        try:
            retrying(attempt)
        except RetryError as error:
            cause = error.last_attempt.exception()
            if self._past_deadline():
                raise self._deadline_error(cause) from None
            raise SyncError(f"gave up after {self.attempts} attempts without progress: {cause}") from None

    def _forget_downloads(self) -> None:
        for path in self.dir.downloads.iterdir():
            shutil.rmtree(path, ignore_errors=True)

    def _clear_staging(self) -> None:
        for path in self.dir.staging.iterdir():
            shutil.rmtree(path, ignore_errors=True)
