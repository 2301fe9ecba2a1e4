"""Where gallery bundles come from: a folder, ``http(s)://`` or ``s3://`` (read through
presigned GETs, so it takes the same ranged, resumable path as plain HTTP).

A transport reads small files whole (the pointer, a manifest) and brings a large file
to its signed size, continuing from what a partial file already holds. The agent
(``sync_agent.py``) decides what to fetch and verifies it; transports only move bytes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import requests
import urllib3

log = logging.getLogger(__name__)

CHUNK = 64 * 1024


class SyncError(RuntimeError):
    """A sync could not complete (source down, disk full, download incomplete)."""


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
