"""The device's gallery sync agent, and ``mpd sync``.

Each sync: read the small ``latest.json`` pointer; if it names a newer version,
fetch the signed manifest first (a wrong signature, another embedder or a delta
for another base is refused before any large download), download every file with
HTTP Range resume, verify sizes and sha256s, apply the delta (or take the full
bundle), install it atomically on disk and swap it into the running pipeline.
Any failure leaves the device on its last good gallery with one clear log line;
partial downloads stay on disk so the next sync resumes them.

Sources (``--from``): a folder, ``http(s)://`` (plain, or a CDN in front of S3),
or ``s3://bucket/prefix``, which is read through presigned URLs so it uses the
same ranged, resumable download path (credentials from the usual boto3 chain, e.g.
the Greengrass Token Exchange Service).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import click
import requests
import urllib3
from pydantic import BaseModel, ConfigDict, Field, ValidationError
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
    verify_files,
)
from edge_app.gallery.delta import GalleryData, apply_delta, write_applied
from edge_app.gallery.install import PUBLIC_KEY_ENV, GalleryDir, check_version_name, load_public_key

log = logging.getLogger(__name__)

POINTER = "latest.json"
POINTER_SCHEMA = "mpd.gallery.latest/1"
ANNOUNCE_TOPIC = "mpd/gallery/latest"
MAX_POINTER_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
CHUNK = 64 * 1024


SYNC_NICE = 10  # the sync thread's niceness: the frame loop gets the CPU first


def lower_thread_priority(nice: int = SYNC_NICE) -> None:
    """Make the calling thread yield the CPU to the frame loop (Linux: niceness is per thread).

    Raising niceness needs no privilege; on other systems this does nothing.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError) as error:
        log.debug("gallery: cannot lower the sync thread's priority: %s", error)


class SyncError(RuntimeError):
    """A sync could not complete (source down, disk full, download incomplete)."""


class DeltaRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_version: str
    path: str  # relative to the gallery root, ends with "/"


class LatestPointer(BaseModel):
    """``latest.json``: where the newest bundle is. Unsigned on purpose: it only points;
    the bundles it points at are signed, and the device refuses to go backwards."""

    model_config = ConfigDict(extra="forbid")
    schema_: Literal["mpd.gallery.latest/1"] = Field(POINTER_SCHEMA, alias="schema")
    gallery_version: str
    full: str  # relative path of the full bundle, ends with "/"
    delta: DeltaRef | None = None  # against the version before this one
    older_deltas: list[DeltaRef] = Field(default_factory=list)  # against earlier ones (devices that missed nights)
    embedder: ModelRef
    published_at: datetime

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)

    def all_deltas(self) -> list[DeltaRef]:
        return ([self.delta] if self.delta else []) + self.older_deltas

    @classmethod
    def parse(cls, payload: bytes | str, origin: str) -> LatestPointer:
        if len(payload) > MAX_POINTER_BYTES:
            raise SyncError(f"{origin}: gallery pointer is {len(payload)} bytes, more than {MAX_POINTER_BYTES}")
        try:
            pointer = cls.model_validate_json(payload)
        except ValidationError as error:
            raise SyncError(f"{origin}: malformed gallery pointer: {error}") from None
        for path in [pointer.full] + [ref.path for ref in pointer.all_deltas()]:
            if path.startswith("/") or ".." in path.split("/") or "://" in path:
                raise SyncError(f"{origin}: gallery pointer path {path!r} leaves the gallery root")
        return pointer


def device_embedder() -> ModelRef:
    """The embedder this device runs (the builder records the same ref in every manifest)."""
    from models import weights

    return ModelRef(id=weights.EMBEDDER.model_id, sha256=weights.EMBEDDER_CLEAN_SHA256)


# --- sources ---------------------------------------------------------------------


class IncompleteDownload(SyncError):
    """The connection ended before the file was complete (resumable)."""


RETRYABLE = (IncompleteDownload, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


class Source:
    """Where bundles come from. ``relpath`` is relative to the gallery root."""

    name: str

    def read_small(self, relpath: str, limit: int) -> bytes:
        raise NotImplementedError

    def download(self, relpath: str, dest: Path, size: int) -> None:
        """Bring ``dest`` to ``size`` bytes, continuing from what it already holds."""
        raise NotImplementedError


class FolderSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = str(self.root)

    def _path(self, relpath: str) -> Path:
        return self.root / relpath

    def read_small(self, relpath: str, limit: int) -> bytes:
        path = self._path(relpath)
        try:
            if path.stat().st_size > limit:
                raise SyncError(f"{path} is larger than {limit} bytes")
            return path.read_bytes()
        except FileNotFoundError:
            raise SyncError(f"{path} does not exist") from None
        except OSError as error:
            raise SyncError(f"cannot read {path}: {error.strerror or error}") from None

    def download(self, relpath: str, dest: Path, size: int) -> None:
        have = dest.stat().st_size if dest.exists() else 0
        try:
            with open(self._path(relpath), "rb") as source, open(dest, "ab") as out:
                source.seek(have)
                while block := source.read(CHUNK):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
        except FileNotFoundError:
            raise SyncError(f"{self._path(relpath)} does not exist") from None


class HttpSource(Source):
    def __init__(self, base_url: str, timeout: tuple[float, float] = (10.0, 30.0)) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.name = self.base_url
        self.timeout = timeout
        self.session = requests.Session()

    def url(self, relpath: str) -> str:
        return self.base_url + relpath

    def read_small(self, relpath: str, limit: int) -> bytes:
        url = self.url(relpath)
        try:
            with self.session.get(url, timeout=self.timeout, stream=True) as response:
                if response.status_code != 200:
                    raise SyncError(f"GET {_public(url)}: HTTP {response.status_code}")
                data = response.raw.read(limit + 1, decode_content=True)
        except RETRYABLE as error:
            raise IncompleteDownload(f"GET {_public(url)}: {error}") from None
        except requests.RequestException as error:
            raise SyncError(f"GET {_public(url)}: {error}") from None
        if len(data) > limit:
            raise SyncError(f"{_public(url)} is larger than {limit} bytes")
        return data

    def download(self, relpath: str, dest: Path, size: int) -> None:
        url = self.url(relpath)
        have = dest.stat().st_size if dest.exists() else 0
        # identity: byte ranges must address the file itself, not a compressed stream of it.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        with self.session.get(url, headers=headers, timeout=self.timeout, stream=True) as response:
            if response.status_code == 206:
                first = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
                if first != str(have):
                    raise SyncError(f"GET {_public(url)}: asked from byte {have}, server sent {first or '?'}")
                mode = "ab"
            elif response.status_code == 200:
                mode = "wb"  # the server ignored Range: start again from the top
                if have:
                    log.info("gallery: %s ignores Range, downloading %s from the start", self.name, relpath)
            elif response.status_code == 416:
                dest.unlink(missing_ok=True)
                raise SyncError(
                    f"GET {_public(url)}: the server holds fewer bytes than the {have} already downloaded "
                    f"(file truncated or replaced on the server)"
                )
            else:
                raise SyncError(f"GET {_public(url)}: HTTP {response.status_code}")
            with open(dest, mode) as out:
                try:
                    # read1 returns what has arrived: a cut connection loses nothing already
                    # received (iter_content would drop a partly filled chunk).
                    while block := response.raw.read1(CHUNK):
                        out.write(block)
                except (urllib3.exceptions.HTTPError, OSError) as error:
                    raise IncompleteDownload(f"GET {_public(url)}: connection broken: {error}") from None
                finally:
                    # Keep what arrived, even when the link drops mid-body.
                    out.flush()
                    os.fsync(out.fileno())


class S3Source(HttpSource):
    """``s3://bucket/prefix``: each object read through a presigned GET, ranged like any HTTP file."""

    def __init__(self, url: str) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise SyncError("s3:// sources need boto3 (pip install boto3), or give an https:// URL") from None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = boto3.client("s3", config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        super().__init__("")
        self.name = url

    def url(self, relpath: str) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + relpath}, ExpiresIn=3600
        )


def _public(url: str) -> str:
    """A URL without its query string (presigned credentials stay out of logs)."""
    return url.split("?", 1)[0]


def open_source(location: str) -> Source:
    if location.startswith("s3://"):
        return S3Source(location)
    if location.startswith(("http://", "https://")):
        return HttpSource(location)
    if "://" in location:
        raise SyncError(f"unsupported gallery source {location!r}: use a folder, http(s):// or s3://")
    return FolderSource(Path(location))


# --- the agent ---------------------------------------------------------------------


@dataclass
class SyncResult:
    status: Literal["up_to_date", "installed", "failed"]
    version: str | None  # the version current after this sync
    detail: str = ""


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
    ) -> None:
        self.source = open_source(source) if isinstance(source, str) else source
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
            self._wake.wait(self.interval)
            self._wake.clear()

    def announce(self, payload: bytes | str) -> None:
        """An MQTT announcement on ``mpd/gallery/latest``: sync now if it names another version.

        The payload is only a hint; the agent still reads the pointer from the source.
        """
        try:
            pointer = LatestPointer.parse(payload, f"MQTT {ANNOUNCE_TOPIC}")
        except SyncError as error:
            log.warning("gallery: ignoring announcement: %s", error)
            return
        if pointer.gallery_version != self.version:
            log.info("gallery: announcement of %s, syncing", pointer.gallery_version)
            self._wake.set()

    # --- one sync --------------------------------------------------------------------

    def sync_once(self) -> SyncResult:
        with self._lock:
            try:
                result = self._sync()
            except (SyncError, BundleError, requests.RequestException) as error:
                result = SyncResult("failed", self.version, str(error))
                log.error("gallery sync failed, staying on %s: %s", self.version or "no gallery", error)
            except OSError as error:
                result = SyncResult("failed", self.version, f"disk error: {error}")
                if error.errno == errno.ENOSPC:
                    # Partial files would keep the disk full for everything else (the outbox first).
                    shutil.rmtree(self.dir.downloads, ignore_errors=True)
                    self.dir.downloads.mkdir(exist_ok=True)
                    result.detail = f"disk full, partial downloads removed: {error}"
                log.error("gallery sync failed, staying on %s: %s", self.version or "no gallery", result.detail)
            finally:
                self._clear_staging()  # staged galleries are either installed (renamed away) or abandoned
            self.last_result = result
            return result

    def _sync(self) -> SyncResult:
        pointer = LatestPointer.parse(self._retrying(self.source.read_small, POINTER, MAX_POINTER_BYTES), POINTER)
        target = check_version_name(pointer.gallery_version)
        if target == self.version:
            return SyncResult("up_to_date", self.version)
        fetched = None
        delta = next((ref for ref in pointer.all_deltas() if self.version and ref.base_version == self.version), None)
        if delta is not None:
            try:
                fetched = self._fetch_delta(pointer, delta)
            except (SyncError, BundleError) as error:
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
        manifest_bytes = self._retrying(self.source.read_small, relpath + MANIFEST, MAX_MANIFEST_BYTES)
        signature = self._retrying(self.source.read_small, relpath + SIGNATURE, 4096)
        (work / MANIFEST).write_bytes(manifest_bytes)
        (work / SIGNATURE).write_bytes(signature)
        manifest = read_manifest(work, self.public_key, require_signature=True)
        self._check_manifest(manifest, kind, pointer)
        self._check_space(work, manifest)
        for name, entry in manifest.files.items():
            if "/" in name or name.startswith("."):
                raise BundleError(f"{relpath}{MANIFEST}: file name {name!r} is not allowed")
            final = work / name
            if final.is_file() and final.stat().st_size == entry.size and _sha256(final) == entry.sha256:
                continue
            part = work / f"{name}.part"
            if part.exists() and part.stat().st_size > entry.size:
                part.unlink()
            self._resuming(relpath + name, part, entry.size)
            digest = _sha256(part)
            if digest != entry.sha256:
                part.unlink()
                raise BundleError(
                    f"{self.source.name}{relpath}{name}: sha256 {digest} does not match the signed manifest "
                    f"(tampered or corrupted); discarded, will download again"
                )
            os.replace(part, final)
        return work

    def _download_file(self, relpath: str, part: Path, size: int) -> None:
        self.source.download(relpath, part, size)
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
        free = shutil.disk_usage(work).free
        if free < needed:
            raise SyncError(f"not enough disk for gallery {manifest.gallery_version}: need {needed} bytes, {free} free")

    def _retrying(self, function, *args):
        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.2, max=self.max_wait),
            reraise=False,
        )
        try:
            return retrying(function, *args)
        except RetryError as error:
            cause = error.last_attempt.exception()
            raise SyncError(f"gave up after {self.attempts} attempts: {cause}") from None

    def _resuming(self, relpath: str, part: Path, size: int) -> None:
        """Download with resume; on a poor link a big file needs many connections, so only
        attempts that brought no new byte count toward giving up."""
        stalled = [0]
        have = [part.stat().st_size if part.exists() else 0]

        def attempt() -> None:
            try:
                self._download_file(relpath, part, size)
            finally:
                now = part.stat().st_size if part.exists() else 0
                stalled[0] = 0 if now > have[0] else stalled[0] + 1
                have[0] = now

        retrying = Retrying(
            retry=retry_if_exception_type(RETRYABLE),
            stop=lambda state: stalled[0] >= self.attempts,
            wait=lambda state: min(self.max_wait, 0.2 * 2 ** max(0, stalled[0] - 1)),
            reraise=False,
        )
        try:
            retrying(attempt)
        except RetryError as error:
            cause = error.last_attempt.exception()
            raise SyncError(f"gave up after {self.attempts} attempts without progress: {cause}") from None

    def _forget_downloads(self) -> None:
        for path in self.dir.downloads.iterdir():
            shutil.rmtree(path, ignore_errors=True)

    def _clear_staging(self) -> None:
        for path in self.dir.staging.iterdir():
            shutil.rmtree(path, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class AnnouncementListener:
    """Subscribes to the retained ``mpd/gallery/latest`` announcement (mutual TLS, the device's
    IoT Core identity) and wakes the agent. paho reconnects by itself and resubscribes in
    ``on_connect``; the broker replays the retained announcement on every subscribe."""

    def __init__(self, agent: SyncAgent, host: str, port: int, ca: str, cert: str, key: str, client_id: str) -> None:
        import ssl

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.agent = agent
        self.received = 0
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        try:
            client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        except (ssl.SSLError, OSError) as error:
            raise SyncError(f"mqtt: cannot load TLS files (ca={ca}, cert={cert}, key={key}): {error}") from None
        client.reconnect_delay_set(min_delay=1, max_delay=300)
        client.on_connect = lambda c, userdata, flags, rc, props: c.subscribe(ANNOUNCE_TOPIC, qos=1)
        client.on_message = self._on_message
        client.connect_async(host, port, keepalive=120)
        client.loop_start()
        self.client = client

    def _on_message(self, client, userdata, message) -> None:
        self.received += 1
        self.agent.announce(message.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- mpd sync --------------------------------------------------------------------------


def resolve_public_key(path: str | None):
    source = path or os.environ.get(PUBLIC_KEY_ENV)
    if not source:
        raise click.UsageError(f"give --public-key or set {PUBLIC_KEY_ENV} to the gallery public key (PEM file)")
    try:
        return load_public_key(source)
    except BundleError as error:
        raise click.ClickException(str(error)) from None


@click.command("sync")
@click.option("--from", "source", required=True, help="Gallery root: a folder, http(s):// URL or s3://bucket/prefix.")
@click.option("--dir", "gallery_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The device's gallery directory.")  # fmt: skip
@click.option("--public-key", help=f"Gallery public key (PEM); default ${PUBLIC_KEY_ENV}.")
@click.option("--once", is_flag=True, help="Sync once and exit (status 1 if the sync failed).")
@click.option("--interval", default=3600.0, show_default=True, help="Seconds between polls.")
@click.option("--mqtt-host", help="Also sync on announcements on mpd/gallery/latest from this broker.")
@click.option("--mqtt-port", default=8883, show_default=True)
@click.option("--mqtt-ca", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-cert", type=click.Path(exists=True, dir_okay=False))
@click.option("--mqtt-key", type=click.Path(exists=True, dir_okay=False))
@click.option("--client-id", default="mpd-gallery-sync", show_default=True, help="MQTT client id.")
def sync_command(
    source: str,
    gallery_dir: Path,
    public_key: str | None,
    once: bool,
    interval: float,
    mqtt_host: str | None,
    mqtt_port: int,
    mqtt_ca: str | None,
    mqtt_cert: str | None,
    mqtt_key: str | None,
    client_id: str,
) -> None:
    """Fetch, verify and install the latest gallery."""
    try:
        agent = SyncAgent(source, gallery_dir, resolve_public_key(public_key), interval=interval)
    except SyncError as error:
        raise click.ClickException(str(error)) from None
    if not once:
        listener = None
        if mqtt_host:
            if not (mqtt_ca and mqtt_cert and mqtt_key):
                raise click.UsageError("--mqtt-host needs --mqtt-ca, --mqtt-cert and --mqtt-key (mutual TLS)")
            listener = AnnouncementListener(agent, mqtt_host, mqtt_port, mqtt_ca, mqtt_cert, mqtt_key, client_id)
        agent.start()
        try:
            while agent._thread.is_alive():
                agent._thread.join(1.0)
        except KeyboardInterrupt:
            agent.stop()
        finally:
            if listener is not None:
                listener.close()
        return
    result = agent.sync_once()
    click.echo(
        f"gallery {result.status}: {result.version or 'none installed'}{' - ' + result.detail if result.detail else ''}"
    )
    if result.status == "failed":
        raise SystemExit(1)
