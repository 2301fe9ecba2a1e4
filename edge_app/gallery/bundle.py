"""The gallery bundle: the one definition of its on-disk format (docs/gallery.md), written by the
cloud's nightly build and read by every device.

A bundle is a directory:

    manifest.json   what is in the bundle (``Manifest``), every file's size and sha256
    manifest.sig    Ed25519 signature over the exact bytes of manifest.json (base64)
    vectors.npy     float32 [n, dimension], L2-normalised embeddings (one row per label)
    labels.json     person_id of each row of vectors.npy
    persons.json    minimal person table: rows of ``PersonRow``
    removed.json    (delta only) person ids that leave the gallery
    index.hnsw      (optional) hnswlib index over vectors.npy when the manifest says so

The cloud builder writes bundles with ``write_bundle``; the device reads them with
``load_bundle``, which refuses anything whose files, hashes or signature do not
match. Keep this module light: no OpenCV, no cloud SDKs.

Format versions: 1 has no ``score`` (raw cosine, the device picks the threshold for the
gallery's size); 2 adds ``score`` (``ScoreSpec``: how a cosine becomes the score the
threshold applies to, and the threshold the builder calibrated for this gallery).
Devices load both; a device older than format 2 refuses a format-2 bundle by its version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

FORMAT_VERSION = 2
SUPPORTED_FORMAT_VERSIONS = (1, 2)  # what devices running this code load
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
VECTORS = "vectors.npy"
LABELS = "labels.json"
PERSONS = "persons.json"
REMOVED = "removed.json"
HNSW_INDEX = "index.hnsw"


class BundleError(Exception):
    """A bundle is missing, incomplete, tampered with, unsigned or incompatible."""


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ModelRef(BaseModel):
    """Identifies a model file exactly: two bundles are compatible only if these match."""

    model_config = ConfigDict(extra="forbid")
    id: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class SearchSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    engine: Literal["exact", "hnsw"] = "exact"
    params: dict[str, int | float | str] = Field(default_factory=dict)
    reason: str = ""


class ScoreSpec(BaseModel):
    """How the device scores a face against a gallery row, and the threshold for this gallery.

    ``cosine``: the raw cosine. ``snorm``: cosine normalised against the calibration cohort
    named by ``cohort`` (models/scoring.py), on the cosine scale. ``threshold``: what the
    builder calibrated for this gallery's persons for single photos (``mpd identify``);
    ``track_threshold``: the same for a video track's fused votes (calibrated on stranger
    tracks). None lets the device pick them for the gallery's size
    (models.thresholds.threshold_for_gallery). A device configuration overrides them.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["cosine", "snorm"] = "cosine"
    cohort: str = Field(default="", max_length=64)
    threshold: float | None = Field(default=None, ge=-1.0, le=2.0)
    track_threshold: float | None = Field(default=None, ge=-1.0, le=2.0)

    @model_validator(mode="after")
    def _normalised_names_its_cohort(self) -> ScoreSpec:
        if self.kind == "snorm" and not self.cohort:
            raise ValueError("a normalised score (snorm) must name its cohort")
        return self


class PersonRow(BaseModel):
    """A device's whole knowledge of a person: an id, a display name, source and case id; no more
    personal data than an alert needs (the SMS fetches fresh details in the cloud)."""

    model_config = ConfigDict(extra="forbid")
    person_id: str = Field(min_length=1, max_length=128)
    display_name: str = Field(default="", max_length=200)
    source: str = Field(default="local", max_length=64)
    case_id: str = Field(default="", max_length=128)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1, 2] = FORMAT_VERSION
    kind: Literal["full", "delta"] = "full"
    gallery_version: str = Field(min_length=1, max_length=64)
    base_version: str | None = None  # delta bundles only
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    detector: ModelRef
    embedder: ModelRef
    metric: Literal["cosine"] = "cosine"
    dimension: int = Field(gt=0)
    template: Literal["per_photo", "mean"] = "per_photo"
    search: SearchSpec = Field(default_factory=SearchSpec)
    score: ScoreSpec = Field(default_factory=ScoreSpec)
    counts: dict[str, int] = Field(default_factory=dict)
    files: dict[str, FileEntry]
    notes: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _score_needs_format_2(self) -> Manifest:
        if self.format_version == 1 and self.score != ScoreSpec():
            raise ValueError("format_version 1 has no score specification; use format 2")
        return self

    def embedder_compatible(self, other: ModelRef) -> bool:
        return self.embedder.id == other.id and self.embedder.sha256 == other.sha256


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so a reader sees the old or the new content, never part of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _npy_bytes(vectors: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def write_bundle(
    out_dir: Path,
    *,
    manifest_fields: dict,
    vectors: np.ndarray,
    labels: list[str],
    persons: Iterable[PersonRow],
    removed: list[str] | None = None,
    extra_files: dict[str, bytes] | None = None,
    sign: callable | None = None,
) -> Manifest:
    """Write a complete bundle into ``out_dir`` (created; must not hold another bundle).

    ``manifest_fields`` supplies everything but ``files`` and ``counts``. ``sign``
    takes the manifest bytes and returns a raw Ed25519 signature (64 bytes).
    The manifest is written last, so a directory without one is never a bundle.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vectors.ndim != 2 or vectors.shape[0] != len(labels):
        raise BundleError(f"vectors {vectors.shape} do not match {len(labels)} labels")
    persons = list(persons)
    payloads: dict[str, bytes] = {
        VECTORS: _npy_bytes(vectors),
        LABELS: json.dumps(labels).encode(),
        PERSONS: json.dumps([p.model_dump() for p in persons], ensure_ascii=False).encode(),
    }
    if removed is not None:
        payloads[REMOVED] = json.dumps(sorted(removed)).encode()
    payloads.update(extra_files or {})
    for name, data in payloads.items():
        atomic_write_bytes(out_dir / name, data)
    files = {
        name: FileEntry(size=len(data), sha256=hashlib.sha256(data).hexdigest()) for name, data in payloads.items()
    }
    counts = {"vectors": int(vectors.shape[0]), "persons": len(persons)}
    if removed is not None:
        counts["removed"] = len(removed)
    manifest = Manifest(**manifest_fields, dimension=int(vectors.shape[1]), files=files, counts=counts)
    manifest_bytes = manifest.model_dump_json(indent=2).encode()
    if sign is not None:
        atomic_write_bytes(out_dir / SIGNATURE, base64.b64encode(sign(manifest_bytes)) + b"\n")
    atomic_write_bytes(out_dir / MANIFEST, manifest_bytes)
    return manifest


def read_manifest(bundle_dir: Path, public_key=None, require_signature: bool = False) -> Manifest:
    """Read and check the manifest. ``public_key`` is an Ed25519 public key object."""
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: no {MANIFEST} (not a bundle, or a half-written one)")
    manifest_bytes = path.read_bytes()
    if public_key is not None or require_signature:
        verify_signature(bundle_dir, manifest_bytes, public_key)
    try:
        return Manifest.model_validate_json(manifest_bytes)
    except ValidationError as error:
        raise BundleError(f"{path}: invalid manifest: {error}") from None


def verify_signature(bundle_dir: Path, manifest_bytes: bytes, public_key) -> None:
    from cryptography.exceptions import InvalidSignature

    signature_path = Path(bundle_dir) / SIGNATURE
    if public_key is None:
        raise BundleError(f"{bundle_dir}: a signature is required but no public key is configured")
    if not signature_path.is_file():
        raise BundleError(f"{bundle_dir}: unsigned bundle ({SIGNATURE} is missing)")
    try:
        signature = base64.b64decode(signature_path.read_bytes().strip(), validate=True)
        public_key.verify(signature, manifest_bytes)
    except (InvalidSignature, ValueError):
        raise BundleError(f"{bundle_dir}: bad signature on {MANIFEST} (tampered, or signed by another key)") from None


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check every listed file's size and sha256; raise ``BundleError`` naming the first bad one."""
    bundle_dir = Path(bundle_dir)
    for name, entry in manifest.files.items():
        path = bundle_dir / name
        if not path.is_file():
            raise BundleError(f"{bundle_dir}: {name} is missing")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(f"{bundle_dir}: {name} is {size} bytes, manifest says {entry.size}")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(f"{bundle_dir}: {name} sha256 {actual} does not match manifest {entry.sha256}")


class BundleContents(BaseModel):
    """A verified bundle loaded into memory."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    manifest: Manifest
    vectors: np.ndarray
    labels: list[str]
    persons: dict[str, PersonRow]
    removed: list[str] = Field(default_factory=list)
    path: Path


def load_bundle(bundle_dir: Path, public_key=None, require_signature: bool = False) -> BundleContents:
    """Verify (signature when asked, then every file) and load a bundle."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir, public_key, require_signature)
    verify_files(bundle_dir, manifest)
    try:
        vectors = np.load(bundle_dir / VECTORS, allow_pickle=False)
        labels = json.loads((bundle_dir / LABELS).read_text())
        persons = [PersonRow.model_validate(row) for row in json.loads((bundle_dir / PERSONS).read_text())]
        removed = json.loads((bundle_dir / REMOVED).read_text()) if REMOVED in manifest.files else []
    except (ValueError, ValidationError, OSError) as error:
        raise BundleError(f"{bundle_dir}: unreadable bundle content: {error}") from None
    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[1] != manifest.dimension:
        raise BundleError(f"{bundle_dir}: vectors {vectors.dtype} {vectors.shape} do not match the manifest")
    if len(labels) != vectors.shape[0]:
        raise BundleError(f"{bundle_dir}: {len(labels)} labels for {vectors.shape[0]} vectors")
    return BundleContents(
        manifest=manifest,
        vectors=vectors,
        labels=labels,
        persons={p.person_id: p for p in persons},
        removed=removed,
        path=bundle_dir,
    )
