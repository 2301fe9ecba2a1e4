"""The nightly gallery build from the ingest store: incremental, resumable, signed.

1. Embed: every photo of every active case whose sha256 is not yet in the embedding
   cache for this embedder is detected and embedded once. The cache holds every usable
   face of the photo (vector, box) so choosing the subject among several faces (which
   depends on the person's other photos, ``enrol.choose_subject``) stays exact without
   re-embedding. Cache chunks are written as the work goes, so a run stopped by a
   deadline (the Lambda 15-minute limit) resumes where it stopped.
2. Assemble: persons of active cases with at least one usable face, in canonical order
   (``edge_app.gallery.delta``). Resolved and removed cases are simply absent.
3. Write: a signed full bundle, and signed deltas (added vectors, removed labels,
   changed person rows) against the previous build and the ones before it, up to
   ``DELTA_HISTORY``, built with the same embedder.

Output layout (a folder or s3://), read by ``mpd gallery publish``:

    gallery/build.json                      LatestPointer of the last build
    gallery/<version>/full/ , /delta/        the bundles
    gallery/cache/<embedder>/<chunk>.npz     embedding cache (photo sha256 -> faces)
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from edge_app.gallery.bundle import MANIFEST, SIGNATURE, BundleError, ModelRef, PersonRow, load_bundle, write_bundle
from edge_app.gallery.delta import FULL_MANIFEST, FULL_SIGNATURE, GalleryData, canonical, compute_delta
from edge_app.gallery.pointer import DeltaRef, LatestPointer
from edge_app.gallery.search import choose_search, index_files
from sync_service.cycle.config import DEFAULT_SCOPE
from sync_service.cycle.scopes import ScopeFilter, build_prefix
from sync_service.gallery.enrol import score_spec
from sync_service.gallery.publish import BUILD_RECORD_NAME, BUILD_ROOT, PublishError, copy_bundle
from sync_service.store import LocalStore, Store, StoredCase, StoreError, open_store

log = logging.getLogger(__name__)

CACHE_ROOT = "gallery/cache/"
CACHE_FLUSH_EVERY = 200  # photos per cache chunk: bounds the work lost to a crash
# Deltas from this many recent builds: a device offline for up to a week still takes a
# small delta instead of the full bundle over its poor link.
DELTA_HISTORY = 7
MIN_KEPT_SHARE = 0.5  # a build keeping fewer persons than this share of the last one is refused
ALLOW_SHRINK_ENV = "MPD_GALLERY_ALLOW_SHRINK"
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"
DEFAULT_RETENTION = timedelta(days=7)  # deltas are made from builds no older than this
CACHE_CHUNK_MAX = 5000  # photos per chunk when the cache is rewritten (compaction)
LAMBDA_SAFETY_SECONDS = 120.0  # stop embedding this long before the Lambda deadline to write bundles


@dataclass
class PhotoFaces:
    """The cached outcome of detecting and embedding one photo (by sha256)."""

    vectors: np.ndarray  # float32 [k, d], template embeddings of every detected face (k may be 0)
    boxes: np.ndarray  # float32 [k, 4]
    size: tuple[int, int]  # image width, height
    error: str = ""  # the photo could not be decoded (deterministic for its bytes)
    flags: tuple[str, ...] = ()  # per face: the quality gate's objections ("" = none), for the report


class EmbeddingCache:
    """photo sha256 -> ``PhotoFaces`` for one embedder, persisted as chunks in the output store."""

    def __init__(self, out: Store, embedder: ModelRef, dimension: int = 128) -> None:
        self.out = out
        from sync_service.gallery.enrol import TEMPLATE_EMBEDDING

        self.prefix = f"{CACHE_ROOT}{embedder.id}-{embedder.sha256[:16]}-{TEMPLATE_EMBEDDING}/"
        self.dimension = dimension
        self.entries: dict[str, PhotoFaces] = {}
        self.pending: dict[str, PhotoFaces] = {}

    def load(self) -> EmbeddingCache:
        for key in self.out.list_keys(self.prefix):
            if not key.endswith(".npz"):
                continue
            try:
                self.entries.update(_read_chunk(self.out.read_bytes(key) or b""))
            except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as error:
                # A damaged chunk only costs re-embedding its photos.
                log.error("gallery build: ignoring damaged cache chunk %s/%s: %s", self.out.url, key, error)
        return self

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.entries

    def get(self, sha256: str) -> PhotoFaces | None:
        return self.entries.get(sha256)

    def add(self, sha256: str, faces: PhotoFaces) -> None:
        self.entries[sha256] = faces
        self.pending[sha256] = faces
        if len(self.pending) >= CACHE_FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        name = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{len(self.pending)}.npz"
        self.out.write_bytes(self.prefix + name, _write_chunk(self.pending, self.dimension))
        self.pending = {}

    def rewrite(self, keep: set[str]) -> None:
        """Keep only the photos in ``keep``: new chunks first, then the old ones go, so a
        crash in between leaves duplicates (harmless), never a hole."""
        self.flush()
        old = [key for key in self.out.list_keys(self.prefix) if key.endswith(".npz")]
        self.entries = {sha: faces for sha, faces in self.entries.items() if sha in keep}
        shas = sorted(self.entries)
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        written = set()
        for start in range(0, len(shas), CACHE_CHUNK_MAX):
            part = {sha: self.entries[sha] for sha in shas[start : start + CACHE_CHUNK_MAX]}
            name = f"{self.prefix}{stamp}-c{start // CACHE_CHUNK_MAX:04d}-{len(part)}.npz"
            self.out.write_bytes(name, _write_chunk(part, self.dimension))
            written.add(name)
        for key in old:
            if key not in written:
                self.out.delete(key)


def _write_chunk(entries: dict[str, PhotoFaces], dimension: int) -> bytes:
    shas = list(entries)
    faces = [entries[s] for s in shas]
    buffer = io.BytesIO()
    np.savez(
        buffer,
        shas=np.array(shas, dtype="<U64"),
        counts=np.array([len(f.vectors) for f in faces], dtype=np.int32),
        sizes=np.array([f.size for f in faces], dtype=np.int32).reshape(-1, 2),
        errors=np.array([f.error[:500] for f in faces], dtype=str),
        vectors=np.concatenate([f.vectors.reshape(-1, dimension) for f in faces]).astype(np.float32),
        boxes=np.concatenate([f.boxes.reshape(-1, 4) for f in faces]).astype(np.float32),
        flags=np.array([flag[:300] for f in faces for flag in _face_flags(f)], dtype=str),
    )
    return buffer.getvalue()


def _face_flags(faces: PhotoFaces) -> tuple[str, ...]:
    return faces.flags if len(faces.flags) == len(faces.vectors) else ("",) * len(faces.vectors)


def _read_chunk(data: bytes) -> dict[str, PhotoFaces]:
    with np.load(io.BytesIO(data), allow_pickle=False) as chunk:
        shas, counts, sizes, errors = chunk["shas"], chunk["counts"], chunk["sizes"], chunk["errors"]
        vectors, boxes = chunk["vectors"], chunk["boxes"]
        flags = chunk["flags"] if "flags" in chunk.files else np.full(len(vectors), "")
    ends = np.cumsum(counts)
    if len(ends) and ends[-1] != len(vectors):
        raise ValueError(f"chunk lists {ends[-1]} faces but holds {len(vectors)} vectors")
    out = {}
    for i, sha in enumerate(shas):
        start = ends[i] - counts[i]
        out[str(sha)] = PhotoFaces(
            vectors[start : ends[i]], boxes[start : ends[i]], tuple(sizes[i]), str(errors[i]),
            tuple(str(flag) for flag in flags[start : ends[i]]),
        )  # fmt: skip
    return out


def embed_photo_with(models) -> Callable[[bytes], PhotoFaces]:
    """Detect every face of one photo and embed its template with the shared recognition models."""
    from models.images import ImageError, load_image
    from sync_service.gallery.enrol import photo_candidates

    def embed(data: bytes) -> PhotoFaces:
        try:
            image = load_image(data)
        except ImageError as error:
            return PhotoFaces(
                np.zeros((0, models.dimension), np.float32), np.zeros((0, 4), np.float32), (0, 0), str(error)
            )
        candidates, _ = photo_candidates(models, image)
        return PhotoFaces(
            np.array([c.vector for c in candidates], np.float32).reshape(-1, models.dimension),
            np.array([c.face.box for c in candidates], np.float32).reshape(-1, 4),
            (image.shape[1], image.shape[0]),
            flags=tuple(c.face.rejected or "" for c in candidates),
        )

    return embed


def person_vectors(photos: list[PhotoFaces], template: str, dimension: int) -> np.ndarray:
    """The subject's vector from each photo (``enrol``'s choice rule), then the template."""
    from sync_service.gallery.enrol import templates

    chosen = [photo.vectors[index] for photo, index in zip(photos, subject_choices(photos), strict=True) if index >= 0]
    return templates(chosen, template) if chosen else np.zeros((0, dimension), np.float32)


def subject_choices(photos: list[PhotoFaces]) -> list[int]:
    """The subject's face index in each photo (``enrol``'s choice rule); -1 for a photo without faces."""
    from models.faces import Face
    from sync_service.gallery.enrol import Candidate, choose_subjects

    usable = [p for p in photos if len(p.vectors)]
    candidates = [
        (
            [
                Candidate(Face(tuple(float(v) for v in box), np.zeros((5, 2), np.float32), 1.0), vector)
                for vector, box in zip(photo.vectors, photo.boxes, strict=True)
            ],
            photo.size,
        )
        for photo in usable
    ]
    chosen = iter(index for index, _ in choose_subjects(candidates))
    return [next(chosen) if len(photo.vectors) else -1 for photo in photos]


@dataclass
class BuildResult:
    status: str  # "built", "unchanged", "partial" (deadline reached; run again) or "refused"
    version: str | None = None
    embedded: int = 0
    remaining: int = 0
    persons: int = 0
    vectors: int = 0
    delta: dict | None = None
    skipped: list[str] = field(default_factory=list)
    # Enrolled photos the quality gate objects to ("<case>/<photo>: reason"): add a better photo.
    poor_quality: list[str] = field(default_factory=list)
    threshold: float | None = None  # calibrated for this gallery's person count
    error: str = ""
    scopes: dict[str, dict] = field(default_factory=dict)  # scope name -> scope_summary()

    def as_dict(self) -> dict:
        return asdict(self)

    def scope_summary(self) -> dict:
        keys = ("status", "version", "persons", "vectors", "threshold", "delta", "error")
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class BuildScope:
    """One gallery the build writes: everything (the default) or a regional / agency scope."""

    name: str = DEFAULT_SCOPE
    filter: ScopeFilter | None = None  # None: every active case
    retention: timedelta = DEFAULT_RETENTION

    @property
    def prefix(self) -> str:
        return build_prefix(self.name)

    def matches(self, case: StoredCase) -> bool:
        return self.filter is None or self.filter.matches(case)


def version_time(version: str) -> datetime:
    return datetime.strptime(version, VERSION_FORMAT).replace(tzinfo=UTC)


def scope_threshold(persons: int) -> float:
    """The decision threshold calibrated for a gallery of ``persons`` (recorded in the manifest)."""
    from sync_service.gallery.enrol import score_spec

    return float(score_spec(max(persons, 1)).threshold)


def person_row(case: StoredCase) -> PersonRow:
    record = case.record
    return PersonRow(person_id=record.key, display_name=record.name[:200], source=record.source, case_id=record.case_id)


class NightlyBuilder:
    def __init__(self, store: Store, out: Store, models, sign: Callable[[bytes], bytes], public_key) -> None:
        self.store, self.out, self.models = store, out, models
        self.sign, self.public_key = sign, public_key
        self.embedder = ModelRef(**models.embedder_ref)
        self.detector = ModelRef(**models.detector_ref)
        self.cache = EmbeddingCache(out, self.embedder, models.dimension).load()
        self.embed = embed_photo_with(models)

    def run(
        self, deadline: float | None = None, now: datetime | None = None, scopes: list[BuildScope] | None = None
    ) -> BuildResult:
        """Embed what is new, then write each scope's gallery (default: one, everything, at ``gallery/``)."""
        from tqdm import tqdm

        from sync_service.gallery.enrol import TEMPLATE

        cases = list(self.store.iter_cases())
        todo = [(case, photo) for case in cases for photo in case.photos if photo.sha256 not in self.cache]
        result = BuildResult("built")
        seen: set[str] = set()
        skipped: set[str] = set()
        try:
            for case, photo in tqdm(todo, desc="embedding", unit="photo", disable=len(todo) < 50):
                if deadline is not None and time.monotonic() > deadline:
                    break
                if photo.sha256 in seen:
                    continue  # the same photo in two cases is embedded once
                try:
                    data = self.store.read_photo(photo)
                except StoreError as error:
                    log.error("gallery build: photo %s of %s unreadable, left out this time: %s", photo.key, case.record.key, error)  # fmt: skip
                    result.skipped.append(photo.key)
                    skipped.add(photo.sha256)
                    continue
                self.cache.add(photo.sha256, self.embed(data))
                seen.add(photo.sha256)
                result.embedded += 1
        finally:
            self.cache.flush()  # keep finished work even if this run dies (Lambda timeout, crash)
        result.remaining = len({p.sha256 for _, p in todo if p.sha256 not in self.cache} - skipped)
        if result.remaining > 0:
            result.status = "partial"
            log.info("gallery build: deadline reached, %d photos left to embed; run again", result.remaining)
            return result
        groups: dict[str, np.ndarray] = {}
        rows: dict[str, PersonRow] = {}
        for case in cases:
            photos = [(p, self.cache.get(p.sha256)) for p in sorted(case.photos, key=lambda p: p.key)]
            photos = [(p, f) for p, f in photos if f is not None]
            vectors = person_vectors([f for _, f in photos], TEMPLATE, self.models.dimension)
            for (photo, faces), index in zip(photos, subject_choices([f for _, f in photos]), strict=True):
                if index >= 0 and _face_flags(faces)[index]:
                    result.poor_quality.append(f"{photo.key}: {_face_flags(faces)[index]}")
            if len(vectors):
                groups[case.record.key], rows[case.record.key] = vectors, person_row(case)
        now = now or datetime.now(UTC)
        self.compact_cache({p.sha256 for case in cases for p in case.photos})
        scopes = scopes or [BuildScope()]
        for scope in scopes:
            keys = [case.record.key for case in cases if case.record.key in groups and scope.matches(case)]
            gallery = canonical({k: groups[k] for k in keys}, {k: rows[k] for k in keys}, self.models.dimension)
            try:
                outcome = self.write(gallery, TEMPLATE, BuildResult("built"), now, scope)
            except BuildRefused as error:
                if len(scopes) == 1:
                    raise
                log.error("gallery build: scope %s refused: %s", scope.name, error)
                outcome = BuildResult("refused", error=str(error))
            result.scopes[scope.name] = outcome.scope_summary()
            if scope.name == DEFAULT_SCOPE:
                result.status, result.version, result.persons, result.vectors, result.delta = (
                    outcome.status, outcome.version, outcome.persons, outcome.vectors, outcome.delta
                )  # fmt: skip
        if DEFAULT_SCOPE not in result.scopes:
            statuses = {summary["status"] for summary in result.scopes.values()}
            result.status = "built" if "built" in statuses else "unchanged" if statuses == {"unchanged"} else "refused"
        return result

    def compact_cache(self, live: set[str]) -> int:
        """Drop embeddings of photos no active case holds any more (resolved or removed cases,
        replaced photos): a found person's face leaves the cache in the same cycle."""
        stale = [sha for sha in self.cache.entries if sha not in live]
        if stale:
            self.cache.rewrite(keep=live)
            log.info("gallery build: %d embeddings of photos no longer in any active case removed", len(stale))
        return len(stale)

    def previous(self, scope: BuildScope | None = None) -> tuple[LatestPointer, GalleryData] | None:
        root = (scope or BuildScope()).prefix
        data = self.out.read_bytes(root + BUILD_RECORD_NAME)
        if data is None:
            return None
        record = LatestPointer.parse(data, f"{self.out.url}/{root}{BUILD_RECORD_NAME}")
        with tempfile.TemporaryDirectory() as tmp:
            copy_bundle(self.out, root + record.full, LocalStore(tmp), "")
            try:
                bundle = load_bundle(Path(tmp), self.public_key, require_signature=True)
            except BundleError as error:
                log.error("gallery build: previous build unusable, writing a full bundle only: %s", error)
                return None
        if not bundle.manifest.embedder_compatible(self.embedder):
            log.info("gallery build: embedder changed since %s; no delta this time", record.gallery_version)
            return None
        return record, GalleryData.from_bundle(bundle)

    def older(
        self, previous: LatestPointer, scope: BuildScope | None = None, now: datetime | None = None
    ) -> list[tuple[str, GalleryData]]:
        """The builds before the previous one that still get a delta (newest first): at most
        ``DELTA_HISTORY`` builds, none older than the scope's retention."""
        scope = scope or BuildScope()
        bases = [ref.base_version for ref in ([previous.delta] if previous.delta else []) + previous.older_deltas]
        galleries = []
        for version in bases[: DELTA_HISTORY - 1]:
            if now is not None and version_time(version) < now - scope.retention:
                continue  # pruned, or about to be: a device that old takes the full bundle
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    copy_bundle(self.out, f"{scope.prefix}{version}/full/", LocalStore(tmp), "")
                    bundle = load_bundle(Path(tmp), self.public_key, require_signature=True)
                except (BundleError, PublishError, StoreError) as error:
                    log.warning("gallery build: no delta from %s (its full bundle is unusable: %s)", version, error)
                    continue
            if bundle.manifest.embedder_compatible(self.embedder):
                galleries.append((version, GalleryData.from_bundle(bundle)))
        return galleries

    def write(
        self, gallery: GalleryData, template: str, result: BuildResult, now: datetime, scope: BuildScope | None = None
    ) -> BuildResult:
        scope = scope or BuildScope()
        previous = self.previous(scope)
        where = self.store.url if scope.name == DEFAULT_SCOPE else f"{self.store.url} (scope {scope.name})"
        check_size(gallery, previous[1] if previous else None, where)
        result.threshold = scope_threshold(len(gallery.persons))
        if previous is not None and _same(previous[1], gallery):
            result.status, result.version = "unchanged", previous[0].gallery_version
            result.persons, result.vectors = len(gallery.persons), len(gallery.labels)
            return result
        record, result.delta = write_build(
            self.out, gallery, previous, embedder=self.embedder, detector=self.detector, template=template,
            sign=self.sign, now=now, older=self.older(previous[0], scope, now) if previous else [],
            prefix=scope.prefix, notes={"scope": scope.name, "threshold": result.threshold},
        )  # fmt: skip
        result.version, result.persons, result.vectors = (
            record.gallery_version,
            len(gallery.persons),
            len(gallery.labels),
        )
        log.info(
            "gallery build: %s with %d persons, %d vectors", record.gallery_version, result.persons, result.vectors
        )
        return result


def write_build(
    out: Store,
    gallery: GalleryData,
    previous: tuple[LatestPointer, GalleryData] | None,
    *,
    embedder: ModelRef,
    detector: ModelRef,
    template: str,
    sign: Callable[[bytes], bytes],
    now: datetime,
    older: list[tuple[str, GalleryData]] = (),
    prefix: str = BUILD_ROOT,
    notes: dict | None = None,
) -> tuple[LatestPointer, dict | None]:
    """Write the signed full bundle and, given the previous build, the delta from it (and from
    each ``older`` (version, gallery), for devices that missed nights); record the build last."""
    if previous is not None:
        # Versions name directories and devices refuse to go back: always move forward.
        last = datetime.strptime(previous[0].gallery_version, VERSION_FORMAT).replace(tzinfo=UTC)
        now = max(now.replace(microsecond=0), last + timedelta(seconds=1))
    version = now.strftime(VERSION_FORMAT)
    fields = {
        "gallery_version": version,
        "created_at": now,
        "detector": detector,
        "embedder": embedder,
        "template": template,
        "search": choose_search(len(gallery.labels)),
        "score": score_spec(len(gallery.persons)),
        **({"notes": notes} if notes else {}),
    }
    record = LatestPointer(gallery_version=version, full=f"{version}/full/", embedder=embedder, published_at=now)
    delta_info = None
    with tempfile.TemporaryDirectory() as tmp:
        full_dir = Path(tmp, "full")
        index = index_files(gallery.vectors, fields["search"])  # large galleries: devices get the index built
        write_bundle(full_dir, manifest_fields=fields, vectors=gallery.vectors, labels=gallery.labels,
                     persons=gallery.persons, extra_files=index, sign=sign)  # fmt: skip
        copy_bundle(LocalStore(tmp), "full/", out, prefix + record.full)
        # A device applying a delta rebuilds vectors, labels and persons exactly, but not an
        # hnsw index; so deltas carry the signed manifest of the same gallery without it,
        # and such a device builds the index itself when it loads the gallery.
        target_dir = full_dir
        if index:
            target_dir = Path(tmp, "full-without-index")
            write_bundle(target_dir, manifest_fields=fields, vectors=gallery.vectors, labels=gallery.labels,
                         persons=gallery.persons, sign=sign)  # fmt: skip
        full_files = {
            FULL_MANIFEST: (target_dir / MANIFEST).read_bytes(),
            FULL_SIGNATURE: (target_dir / SIGNATURE).read_bytes(),
        }
        bases = ([(previous[0].gallery_version, previous[1])] if previous else []) + list(older)
        for index, (base_version, base) in enumerate(bases):
            delta = compute_delta(base, gallery)
            name = "delta" if index == 0 else f"delta-from-{base_version}"
            write_bundle(
                Path(tmp, name),
                manifest_fields={**fields, "kind": "delta", "base_version": base_version},
                vectors=delta.vectors,
                labels=delta.labels,
                persons=delta.persons,
                removed=delta.removed,
                extra_files=full_files,
                sign=sign,
            )
            ref = DeltaRef(base_version=base_version, path=f"{version}/{name}/")
            copy_bundle(LocalStore(tmp), f"{name}/", out, prefix + ref.path)
            if index == 0:
                record.delta = ref
                delta_info = {
                    "base_version": base_version,
                    "added_vectors": len(delta.labels),
                    "removed_persons": len(delta.removed),
                    "person_rows": len(delta.persons),
                    "full_bytes": sum(f.stat().st_size for f in full_dir.iterdir()),
                    "delta_bytes": sum(f.stat().st_size for f in Path(tmp, name).iterdir()),
                }
            else:
                record.older_deltas.append(ref)
        if delta_info is not None and record.older_deltas:
            delta_info["older_bases"] = [ref.base_version for ref in record.older_deltas]
    out.write_bytes(prefix + BUILD_RECORD_NAME, record.to_json().encode())  # last: the build is complete
    return record, delta_info


class BuildRefused(RuntimeError):
    """The new gallery looks like a mistake (empty, or most persons gone) and is not written."""


def check_size(gallery: GalleryData, previous: GalleryData | None, store_url: str) -> None:
    """A wrong store path or a broken ingest must not empty every device's gallery overnight."""
    if not gallery.persons:
        raise BuildRefused(f"{store_url}: no active case with a usable face; refusing to build an empty gallery")
    if previous is None or os.environ.get(ALLOW_SHRINK_ENV) == "1":
        return
    if len(gallery.persons) < MIN_KEPT_SHARE * len(previous.persons):
        raise BuildRefused(
            f"{store_url}: the gallery would shrink from {len(previous.persons)} to {len(gallery.persons)} persons "
            f"(below {MIN_KEPT_SHARE:.0%}); refusing. If this is intended, set {ALLOW_SHRINK_ENV}=1"
        )


def _same(a: GalleryData, b: GalleryData) -> bool:
    return a.labels == b.labels and a.persons == b.persons and np.array_equal(a.vectors, b.vectors)


def make_builder(store_url: str, out_url: str) -> NightlyBuilder:
    from models.recognizer import FaceModels
    from sync_service.gallery.signing import load_private_key, signer

    key = load_private_key()
    return NightlyBuilder(open_store(store_url), open_store(out_url), FaceModels.load(), signer(key), key.public_key())


def build_from_store_command(store_url: str, out: str) -> None:
    """``mpd gallery build --store URL --out URL``: one complete incremental build."""
    import click

    from sync_service.gallery.signing import SigningKeyError

    try:
        result = make_builder(store_url, out).run()
    except (SigningKeyError, StoreError, BundleError, BuildRefused, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(json.dumps(result.as_dict()))


def lambda_handler(event: dict, context) -> dict:
    """Scheduled Lambda: ``{"store": "s3://...", "out": "s3://..."}`` (or $MPD_STORE_URL, $MPD_GALLERY_OUT).

    Embeds until shortly before the 15-minute limit and returns ``status: partial``;
    the next scheduled run (or a Step Functions loop on ``partial``) continues from the
    cache. The signing key comes from $MPD_GALLERY_SIGNING_KEY(_FILE).
    """

    from aws_lambda_powertools import Logger

    logger = Logger(service="mpd-gallery-build")
    store_url = (event or {}).get("store") or os.environ.get("MPD_STORE_URL")
    out_url = (event or {}).get("out") or os.environ.get("MPD_GALLERY_OUT")
    if not store_url or not out_url:
        logger.error("missing store or out location")
        return {"status": "error", "error": "give event.store and event.out (or MPD_STORE_URL and MPD_GALLERY_OUT)"}
    seconds_left = context.get_remaining_time_in_millis() / 1000.0 if context is not None else 900.0
    deadline = time.monotonic() + max(0.0, seconds_left - LAMBDA_SAFETY_SECONDS)
    try:
        result = make_builder(store_url, out_url).run(deadline=deadline)
    except BuildRefused as error:
        logger.error("gallery build refused", extra={"error": str(error)})
        return {"status": "refused", "error": str(error)}
    logger.info("gallery build finished", extra=result.as_dict())
    return result.as_dict()
