"""The ingest store: person records as JSON and their photos, in a folder or on S3.

One interface (``Store``) over two backends, picked by URL with ``open_store``:
a local folder (the default; no cloud needed) or ``s3://bucket/prefix``. Layout:

    cases/{source}/{case_id}.json                 StoredCase (record + stored photos + state)
    photos/{source}/{case_id}/{photo_id}.{ext}    photo bytes; ext is the true type
    state/{name}.json                             ingest checkpoints

Readers (the nightly gallery builder) use ``iter_cases()`` for current cases and
``read_photo(photo)`` for verified bytes. Every write is atomic: a local write goes
to a temporary file that replaces the target; an S3 PUT is atomic per object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_app.gallery.bundle import atomic_write_bytes
from sync_service.sources.photos import inspect_photo
from sync_service.sources.records import SOURCES, PersonRecord

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be reached or holds something it should not."""


class StoredPhoto(BaseModel):
    """A photo that passed the checks and is in the store."""

    model_config = ConfigDict(frozen=True)

    photo_id: str
    key: str  # store key of the bytes
    sha256: str
    size: int
    mime_type: str  # true type, from the bytes
    width: int
    height: int
    category: str = ""
    source_url: str = ""


class RejectedPhoto(BaseModel):
    model_config = ConfigDict(frozen=True)

    photo_id: str
    reason: str
    detail: str = ""


class StoredCase(BaseModel):
    """What the store holds for one case."""

    record: PersonRecord
    photos: list[StoredPhoto] = Field(default_factory=list)
    rejected_photos: list[RejectedPhoto] = Field(default_factory=list)
    removed: bool = False  # resolved, unpublished (404) or gone from the listing
    removed_reason: str | None = None
    scopes: list[str] = Field(default_factory=list)  # listing partitions it was seen in (NamUs states)
    ingested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def active(self) -> bool:
        """Whether the case belongs in the gallery."""
        return not self.removed and not self.record.resolved


def case_key(source: str, case_id: str) -> str:
    return f"cases/{source}/{case_id}.json"


def photo_key(source: str, case_id: str, photo_id: str, extension: str) -> str:
    return f"photos/{source}/{case_id}/{photo_id}.{extension}"


class Store(ABC):
    """Key-value primitives (implemented per backend) plus the record and photo API."""

    url: str

    # --- primitives -------------------------------------------------------------
    @abstractmethod
    def read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None if it does not exist."""

    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Write atomically: readers see the old object or the new one, never half."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object if it exists."""

    @abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix``, sorted."""

    # --- JSON ---------------------------------------------------------------------
    def read_json(self, key: str) -> Any | None:
        data = self.read_bytes(key)
        if data is None:
            return None
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise StoreError(f"{self.url}/{key} is not valid JSON: {error}") from None

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, json.dumps(value, indent=1, sort_keys=True, default=str).encode())

    # --- cases --------------------------------------------------------------------
    def put_case(self, case: StoredCase) -> None:
        self.write_bytes(case_key(case.record.source, case.record.case_id), case.model_dump_json(indent=1).encode())

    def get_case(self, source: str, case_id: str) -> StoredCase | None:
        data = self.read_bytes(case_key(source, case_id))
        if data is None:
            return None
        try:
            return StoredCase.model_validate_json(data)
        except ValidationError as error:
            raise StoreError(f"{self.url}/{case_key(source, case_id)} is not a stored case: {error}") from None

    def iter_cases(self, source: str | None = None, active_only: bool = True) -> Iterator[StoredCase]:
        """Stored cases (by default only those that belong in the gallery), sorted by key.

        A damaged case file is logged and skipped, so one bad object cannot stop a build.
        """
        for name in [source] if source else SOURCES:
            for key in self.list_keys(f"cases/{name}/"):
                if not key.endswith(".json"):
                    continue
                try:
                    case = StoredCase.model_validate_json(self.read_bytes(key) or b"")
                except ValidationError as error:
                    log.error("skipping damaged case file %s/%s: %s", self.url, key, error)
                    continue
                if case.active or not active_only:
                    yield case

    # --- photos -------------------------------------------------------------------
    def put_photo(
        self, source: str, case_id: str, photo_id: str, data: bytes, *, category: str = "", source_url: str = ""
    ) -> StoredPhoto:
        """Check and store a photo; raises ``PhotoRejected`` (with the reason) if unusable."""
        info = inspect_photo(data)
        key = photo_key(source, case_id, photo_id, info.extension)
        self.write_bytes(key, data)
        return StoredPhoto(
            photo_id=photo_id,
            key=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            mime_type=info.mime_type,
            width=info.width,
            height=info.height,
            category=category,
            source_url=source_url,
        )

    def read_photo(self, photo: StoredPhoto) -> bytes:
        """The photo's bytes, checked against the recorded sha256."""
        data = self.read_bytes(photo.key)
        if data is None:
            raise StoreError(f"photo {self.url}/{photo.key} is missing")
        digest = hashlib.sha256(data).hexdigest()
        if digest != photo.sha256:
            raise StoreError(f"photo {self.url}/{photo.key} has sha256 {digest}, expected {photo.sha256}")
        return data


class LocalStore(Store):
    """A folder on disk (the default)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or key.startswith("/"):
            raise StoreError(f"key {key!r} points outside the store {self.root}")
        return path

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write_bytes(self, key: str, data: bytes) -> None:
        # After a crash the old or the new file is there, never a half-written one.
        atomic_write_bytes(self._path(key), data)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Empty folders go too (a pruned gallery version, a removed case's photos), as on S3.
        for folder in path.parents:
            if folder == self.root or not folder.is_relative_to(self.root):
                break
            try:
                folder.rmdir()
            except OSError:  # not empty (or already gone)
                break

    def list_keys(self, prefix: str) -> Iterator[str]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self._path(folder) if folder else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.endswith(".part"):
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key


class S3Store(Store):
    """``s3://bucket/prefix`` through boto3 (endpoint from ``AWS_ENDPOINT_URL`` when set)."""

    def __init__(self, url: str, client: Any | None = None) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = url.rstrip("/")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.client = client

    def _error(self, action: str, key: str, error: Exception) -> StoreError:
        return StoreError(f"S3 {action} s3://{self.bucket}/{self.prefix}{key} failed: {error}")

    def read_bytes(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise self._error("read", key, error) from None
        except BotoCoreError as error:
            raise self._error("read", key, error) from None

    def write_bytes(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)
        except (BotoCoreError, ClientError) as error:
            raise self._error("write", key, error) from None

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except (BotoCoreError, ClientError) as error:
            raise self._error("delete", key, error) from None

    def list_keys(self, prefix: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            ):
                keys.extend(item["Key"][len(self.prefix) :] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as error:
            raise self._error("list", prefix, error) from None
        yield from sorted(keys)


def open_store(url: str | os.PathLike[str]) -> Store:
    """``s3://bucket/prefix`` opens an S3Store; anything else is a local folder."""
    text = os.fspath(url)
    if text.startswith("s3://"):
        return S3Store(text)
    if "://" in text:
        raise ValueError(f"unsupported store URL {text!r}: use a folder path or s3://bucket/prefix")
    return LocalStore(text)
