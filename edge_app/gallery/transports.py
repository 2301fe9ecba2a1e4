"""Where gallery bundles come from: a folder, ``http(s)://`` or ``s3://`` (read through
presigned GETs, so it takes the same ranged, resumable path as plain HTTP).

A transport reads small files whole (the pointer, a manifest) and brings a large file
to its signed size, continuing from what a partial file already holds. Whatever a server
sends, nothing is read past the limit or written past the signed size; a full disk is
``DiskFull``, not a broken connection; deadlines bound whole transfers. The agent
(``sync_agent.py``) decides what to fetch and verifies it; transports only move bytes.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

import requests
import urllib3

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class SyncError(RuntimeError):
    """A sync could not complete (source down, disk full, download incomplete)."""


class IncompleteDownload(SyncError):
    """The connection ended (or its deadline passed) before the file was complete (resumable)."""


class DiskFull(SyncError):
    """The disk is full, or a download would leave less free than the device keeps (not retried)."""


RETRYABLE = (IncompleteDownload, requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
FREE_CHECK_EVERY = 1 << 20  # bytes written between free-space checks


class Source:
    """Where bundles come from. ``relpath`` is relative to the gallery root.

    ``deadline`` is a ``time.monotonic()`` instant: a transfer still running then stops
    (within one read timeout) with ``IncompleteDownload``, keeping what arrived. A read
    timeout alone does not bound a transfer: a server trickling one byte per timeout keeps
    every read alive."""

    name: str

    def read_small(self, relpath: str, limit: int, deadline: float | None = None) -> bytes:
        """The whole file, refused (SyncError) when larger than ``limit`` bytes: never read past it."""
        raise NotImplementedError

    def download(
        self, relpath: str, dest: Path, size: int, *, deadline: float | None = None, keep_free: int = 0
    ) -> None:
        """Bring ``dest`` to ``size`` bytes, continuing from what it already holds. Never writes
        past ``size`` (the signed size), whatever the server sends; raises DiskFull on ENOSPC or
        when the disk's free space would drop below ``keep_free``."""
        raise NotImplementedError


def _copy(read: Callable[[int], bytes], out: BinaryIO, dest: Path, remaining: int, deadline, keep_free: int) -> int:
    """Append at most ``remaining`` bytes from ``read`` to ``out``; returns how many were written."""
    written = checked = 0
    while written < remaining:
        if deadline is not None and time.monotonic() > deadline:
            raise IncompleteDownload(f"{dest.name}: download deadline reached ({written} bytes this time, kept)")
        block = read(min(CHUNK, remaining - written))
        if not block:
            break
        block = block[: remaining - written]
        try:
            out.write(block)
        except OSError as error:
            raise _disk_error(error, dest) from None
        written += len(block)
        if keep_free and written - checked >= FREE_CHECK_EVERY:
            checked = written
            free = shutil.disk_usage(dest.parent).free
            if free < keep_free:
                raise DiskFull(f"{dest.name}: {free} bytes free, below the {keep_free} kept free for the device")
    return written


def _sync(out: BinaryIO, dest: Path) -> None:
    """Flush what arrived to disk (kept for resume even when the link drops mid-body)."""
    try:
        out.flush()
        os.fsync(out.fileno())
    except OSError as error:
        raise _disk_error(error, dest) from None


def _disk_error(error: OSError, dest: Path) -> Exception:
    if error.errno == errno.ENOSPC:
        return DiskFull(f"disk full writing {dest}: {error.strerror}")
    return error


class FolderSource(Source):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.name = str(self.root)

    def _path(self, relpath: str) -> Path:
        return self.root / relpath

    def read_small(self, relpath: str, limit: int, deadline: float | None = None) -> bytes:
        path = self._path(relpath)
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            raise SyncError(f"{path} does not exist") from None
        except OSError as error:
            raise SyncError(f"cannot read {path}: {error.strerror or error}") from None
        if len(data) > limit:
            raise SyncError(f"{path} is larger than {limit} bytes")
        return data

    def download(
        self, relpath: str, dest: Path, size: int, *, deadline: float | None = None, keep_free: int = 0
    ) -> None:
        have = dest.stat().st_size if dest.exists() else 0
        try:
            with open(self._path(relpath), "rb") as source, open(dest, "ab") as out:
                source.seek(have)
                try:
                    _copy(source.read, out, dest, size - have, deadline, keep_free)
                finally:
                    _sync(out, dest)
        except FileNotFoundError:
            raise SyncError(f"{self._path(relpath)} does not exist") from None


class HttpSource(Source):
    def __init__(self, base_url: str, timeout: tuple[float, float] = (10.0, 30.0)) -> None:
        """``timeout``: (connect, per read) seconds; whole transfers are bounded by deadlines."""
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.name = self.base_url
        self.timeout = timeout
        self.session = requests.Session()

    def url(self, relpath: str) -> str:
        return self.base_url + relpath

    def read_small(self, relpath: str, limit: int, deadline: float | None = None) -> bytes:
        url = self.url(relpath)
        try:
            with self.session.get(url, timeout=self.timeout, stream=True) as response:
                if response.status_code != 200:
                    raise SyncError(f"GET {_public(url)}: HTTP {response.status_code}")
                length = response.headers.get("Content-Length", "")
                if length.isdigit() and int(length) > limit:
                    raise SyncError(f"{_public(url)} is {length} bytes, more than {limit}: not read")
                data = bytearray()
                while len(data) <= limit:
                    if deadline is not None and time.monotonic() > deadline:
                        raise IncompleteDownload(f"GET {_public(url)}: deadline reached after {len(data)} bytes")
                    block = response.raw.read1(min(CHUNK, limit + 1 - len(data)), decode_content=True)
                    if not block:
                        break
                    data += block
        except RETRYABLE as error:
            raise IncompleteDownload(f"GET {_public(url)}: {error}") from None
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise IncompleteDownload(f"GET {_public(url)}: connection broken: {error}") from None
        except requests.RequestException as error:
            raise SyncError(f"GET {_public(url)}: {error}") from None
        if len(data) > limit:
            raise SyncError(f"{_public(url)} is larger than {limit} bytes")
        return bytes(data)

    def download(
        self, relpath: str, dest: Path, size: int, *, deadline: float | None = None, keep_free: int = 0
    ) -> None:
        url = self.url(relpath)
        have = dest.stat().st_size if dest.exists() else 0
        # identity: byte ranges must address the file itself, not a compressed stream of it.
        headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
        with self.session.get(url, headers=headers, timeout=self.timeout, stream=True) as response:
            if response.status_code == 206:
                first, _, total = response.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
                first = first.split("-")[0]
                if first != str(have):
                    raise SyncError(f"GET {_public(url)}: asked from byte {have}, server sent {first or '?'}")
                if total.isdigit() and int(total) != size:
                    raise SyncError(f"GET {_public(url)}: server has {total} bytes, the signed manifest says {size}")
                mode, remaining = "ab", size - have
            elif response.status_code == 200:
                mode, remaining = "wb", size  # the server ignored Range: start again from the top
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
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > remaining:
                raise SyncError(
                    f"GET {_public(url)}: server offers {length} bytes, {remaining} expected (signed size {size}); "
                    "not read"
                )

            def read(amount: int) -> bytes:
                # read1 returns what has arrived: a cut connection loses nothing already
                # received (iter_content would drop a partly filled chunk).
                try:
                    return response.raw.read1(amount)
                except (urllib3.exceptions.HTTPError, OSError) as error:
                    raise IncompleteDownload(f"GET {_public(url)}: connection broken: {error}") from None

            with open(dest, mode) as out:
                try:
                    _copy(read, out, dest, remaining, deadline, keep_free)
                finally:
                    _sync(out, dest)  # keep what arrived, even when the link drops mid-body


class S3Source(HttpSource):
    """``s3://bucket/prefix``: each object read through a presigned GET, ranged like any HTTP file.

    URLs are signed (SigV4, query string) with awscrt, which the device carries anyway for
    the IoT SDK, so botocore (17 MB) stays off the device. Credentials come from awscrt's
    default chain: environment variables, the shared profile, and the container endpoint
    that Greengrass's Token Exchange Service sets up for its components
    (``AWS_CONTAINER_CREDENTIALS_FULL_URI``). Region: ``AWS_REGION``/``AWS_DEFAULT_REGION``;
    endpoint: ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` (a local S3 stand-in), path-style.
    """

    EXPIRES_S = 3600
    SIGN_TIMEOUT_S = 30.0

    def __init__(self, url: str) -> None:
        try:
            from awscrt import auth
        except ImportError:
            raise SyncError("s3:// sources need awscrt (pip install awscrt), or give an https:// URL") from None
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise SyncError(f"{url!r} names no bucket")
        self.bucket, self.prefix = bucket, prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:  # a stand-in or a private endpoint: path-style addressing
            parts = urlsplit(endpoint)
            self.scheme, self.host, self.base_path = parts.scheme, parts.netloc, f"/{bucket}/"
        else:  # virtual-hosted style (bucket names with dots are not allowed for Greengrass anyway)
            self.scheme, self.host, self.base_path = "https", f"{bucket}.s3.{self.region}.amazonaws.com", "/"
        try:
            self._credentials = auth.AwsCredentialsProvider.new_default_chain()
        except Exception as error:  # noqa: BLE001 - awscrt raises its own AwsCrtError
            raise SyncError(f"{url}: no AWS credentials provider: {error}") from None
        super().__init__("")
        self.name = url

    def url(self, relpath: str) -> str:
        from awscrt import auth, http

        path = self.base_path + quote(self.prefix + relpath, safe="/~")
        config = auth.AwsSigningConfig(
            algorithm=auth.AwsSigningAlgorithm.V4,
            signature_type=auth.AwsSignatureType.HTTP_REQUEST_QUERY_PARAMS,
            credentials_provider=self._credentials,
            region=self.region,
            service="s3",
            # S3 signs the path as sent: no double encoding, no normalisation.
            use_double_uri_encode=False,
            should_normalize_uri_path=False,
            signed_body_value=auth.AwsSignedBodyValue.UNSIGNED_PAYLOAD,
            expiration_in_seconds=self.EXPIRES_S,
        )
        request = http.HttpRequest("GET", path, http.HttpHeaders([("host", self.host)]))
        try:
            signed = auth.aws_sign_request(request, config).result(self.SIGN_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - no credentials, credential endpoint down
            raise SyncError(f"{self.name}: cannot sign the request for {relpath}: {error}") from None
        return f"{self.scheme}://{self.host}{signed.path}"


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
