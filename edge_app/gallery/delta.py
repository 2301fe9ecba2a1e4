"""Delta bundles: what changed between two gallery versions, and how a device applies it.

A delta is an ordinary bundle (``edge_app.gallery.bundle``) with ``kind="delta"`` and
``base_version`` set, holding:

    vectors.npy + labels.json   every vector of each added or changed person
    persons.json                rows of added persons and of persons whose row changed
    removed.json                persons whose vectors leave (resolved cases, and changed
                                persons, whose new vectors are in vectors.npy)
    full_manifest.json/.sig     the signed manifest of the full bundle of the same version

Both sides order a gallery canonically (persons by id, each person's vectors in the
builder's order), so applying a delta to its base reproduces the full bundle byte for
byte. The device proves that by checking the rebuilt files against the signed full
manifest: a delta-updated gallery is the cloud's full gallery, or it is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.gallery.bundle import (
    LABELS,
    MANIFEST,
    PERSONS,
    SIGNATURE,
    VECTORS,
    BundleContents,
    BundleError,
    PersonRow,
    _npy_bytes,
    atomic_write_bytes,
    fsync_dir,
)

FULL_MANIFEST = "full_manifest.json"
FULL_SIGNATURE = "full_manifest.sig"


@dataclass
class GalleryData:
    """A whole gallery in canonical order: rows grouped by person, persons sorted by id."""

    vectors: np.ndarray  # float32 [n, d]
    labels: list[str]
    persons: list[PersonRow]  # sorted by person_id

    @classmethod
    def from_bundle(cls, bundle: BundleContents) -> GalleryData:
        return cls(bundle.vectors, list(bundle.labels), sorted(bundle.persons.values(), key=lambda p: p.person_id))

    def files(self) -> dict[str, bytes]:
        """The exact bytes ``write_bundle`` writes for these arrays (tests pin the equality)."""
        return {
            VECTORS: _npy_bytes(self.vectors),
            LABELS: json.dumps(self.labels).encode(),
            # dict(row) is model_dump() for these flat rows, several times faster at 25k rows.
            PERSONS: json.dumps([dict(p) for p in self.persons], ensure_ascii=False).encode(),
        }


@dataclass
class DeltaData:
    vectors: np.ndarray
    labels: list[str]
    persons: list[PersonRow]
    removed: list[str]


def canonical(groups: dict[str, np.ndarray], persons: dict[str, PersonRow], dimension: int) -> GalleryData:
    """Lay out per-person vector groups in canonical order. Persons without vectors are left out."""
    ids = sorted(pid for pid, rows in groups.items() if len(rows))
    missing = [pid for pid in ids if pid not in persons]
    if missing:
        raise BundleError(f"no person row for {len(missing)} labelled person(s), e.g. {missing[:3]}")
    blocks = [np.asarray(groups[pid], dtype=np.float32).reshape(-1, dimension) for pid in ids]
    vectors = np.concatenate(blocks) if blocks else np.zeros((0, dimension), np.float32)
    labels = [pid for pid, block in zip(ids, blocks, strict=True) for _ in range(len(block))]
    return GalleryData(vectors, labels, [persons[pid] for pid in ids])


def group_by_person(vectors: np.ndarray, labels: list[str]) -> dict[str, np.ndarray]:
    """Rows of each person, in their original order (views when a person's rows are contiguous,
    as they are in canonical order)."""
    groups: dict[str, np.ndarray] = {}
    start = 0
    for end in range(1, len(labels) + 1):
        if end == len(labels) or labels[end] != labels[start]:
            label, block = labels[start], vectors[start:end]
            groups[label] = np.concatenate([groups[label], block]) if label in groups else block
            start = end
    return groups


def compute_delta(old: GalleryData, new: GalleryData) -> DeltaData:
    """Added vectors, removed labels and changed person rows taking ``old`` to ``new``."""
    old_groups, new_groups = group_by_person(old.vectors, old.labels), group_by_person(new.vectors, new.labels)
    old_rows = {p.person_id: p for p in old.persons}
    changed_vectors = sorted(
        pid
        for pid, rows in new_groups.items()
        if pid not in old_groups or not np.array_equal(old_groups[pid], rows)  # exact: any new photo counts
    )
    removed = sorted(
        {pid for pid in old_groups if pid not in new_groups} | {pid for pid in changed_vectors if pid in old_groups}
    )
    changed = set(changed_vectors)
    upserts = [p for p in new.persons if p.person_id in changed or old_rows.get(p.person_id) != p]
    added = canonical(
        {pid: new_groups[pid] for pid in changed_vectors}, {p.person_id: p for p in new.persons}, new.vectors.shape[1]
    )
    return DeltaData(added.vectors, added.labels, upserts, removed)


def apply_delta(base: GalleryData, delta: BundleContents) -> GalleryData:
    """The gallery ``delta`` turns ``base`` into (base version already checked by the caller)."""
    if delta.manifest.kind != "delta":
        raise BundleError(f"{delta.path}: not a delta bundle (kind={delta.manifest.kind})")
    dimension = base.vectors.shape[1]
    if delta.vectors.shape[1] != dimension:
        raise BundleError(
            f"{delta.path}: delta vectors have dimension {delta.vectors.shape[1]}, gallery has {dimension}"
        )
    groups = group_by_person(base.vectors, base.labels)
    persons = {p.person_id: p for p in base.persons}
    for pid in delta.removed:
        groups.pop(pid, None)
        persons.pop(pid, None)
    for pid, rows in group_by_person(delta.vectors, delta.labels).items():
        if pid in groups:
            raise BundleError(f"{delta.path}: adds vectors for {pid!r} without removing its old ones")
        groups[pid] = rows
    persons.update(delta.persons)
    return canonical(groups, persons, dimension)


def write_applied(out_dir: Path, result: GalleryData, delta_dir: Path) -> None:
    """Write ``result`` as the full bundle the delta names (its signed manifest copied in).

    The caller then verifies ``out_dir`` like any downloaded full bundle.
    """
    out_dir, delta_dir = Path(out_dir), Path(delta_dir)
    for name in (FULL_MANIFEST, FULL_SIGNATURE):
        if not (delta_dir / name).is_file():
            raise BundleError(f"{delta_dir}: delta lacks {name}, cannot rebuild the signed full gallery")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, data in result.files().items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_bytes(out_dir / SIGNATURE, (delta_dir / FULL_SIGNATURE).read_bytes())
    atomic_write_bytes(out_dir / MANIFEST, (delta_dir / FULL_MANIFEST).read_bytes())
    fsync_dir(out_dir)
