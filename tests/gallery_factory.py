"""Synthetic galleries and published gallery roots for the gallery build/sync tests.

Vectors are synthetic (unit vectors, two close ones per person) because these tests
exercise formats, transport and installation, not recognition; the builder test
that embeds real photos uses the shared face data.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_app.gallery.bundle import ModelRef, PersonRow
from edge_app.gallery.delta import GalleryData, canonical, group_by_person
from edge_app.gallery.sync_agent import device_embedder
from sync_service.gallery import nightly
from sync_service.gallery.nightly import write_build
from sync_service.gallery.publish import publish
from sync_service.store import open_store

DIM = 128
DETECTOR = ModelRef(
    id="yunet_2023mar_int8bq", sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
)
T0 = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def person_vectors(rng: np.random.Generator, photos: int = 2) -> np.ndarray:
    centre = rng.standard_normal(DIM)
    return unit(centre + 0.6 * rng.standard_normal((photos, DIM)))


def synthetic_gallery(persons: int, seed: int = 0, photos: int = 2) -> GalleryData:
    rng = np.random.default_rng(seed)
    groups, rows = {}, {}
    for i in range(persons):
        pid = f"namus:MP{i:06d}"
        groups[pid] = person_vectors(rng, photos)
        rows[pid] = PersonRow(person_id=pid, display_name=f"Person {i}", source="namus", case_id=f"MP{i:06d}")
    return canonical(groups, rows, DIM)


def churn(gallery: GalleryData, fraction: float, seed: int = 1) -> GalleryData:
    """Daily churn: of ``fraction`` of persons, 40% resolved (leave), 40% new cases,
    10% new photos, 10% edited rows (e.g. a corrected name)."""
    rng = np.random.default_rng(seed)
    groups = group_by_person(gallery.vectors, gallery.labels)
    rows = {p.person_id: p for p in gallery.persons}
    count = max(4, round(fraction * len(rows)))
    ids = [str(pid) for pid in rng.permutation(sorted(rows))]
    n_leave, n_small = round(count * 0.4), max(1, round(count * 0.1))
    leave = ids[:n_leave]
    new_photos = ids[n_leave : n_leave + n_small]
    edit = ids[n_leave + n_small : n_leave + 2 * n_small]
    for pid in leave:
        del groups[pid], rows[pid]
    for pid in new_photos:
        groups[pid] = person_vectors(rng, 3)
    for pid in edit:
        rows[pid] = rows[pid].model_copy(update={"display_name": rows[pid].display_name + " (corrected)"})
    start = int(rng.integers(10**6, 10**7))
    for i in range(n_leave):
        pid = f"namus:MP{start + i:07d}"
        groups[pid] = person_vectors(rng, 2)
        rows[pid] = PersonRow(person_id=pid, display_name=f"New {i}", source="namus", case_id=f"MP{start + i:07d}")
    return canonical(groups, rows, DIM)


class Publisher:
    """Builds signed versions into ``build_out`` and publishes them to ``root`` (a folder),
    exactly as ``mpd gallery build`` + ``mpd gallery publish`` do."""

    def __init__(self, workdir: Path, key: Ed25519PrivateKey | None = None, embedder: ModelRef | None = None):
        self.key = key or Ed25519PrivateKey.generate()
        self.public_key = self.key.public_key()
        self.embedder = embedder or device_embedder()
        self.build_out = Path(workdir) / "build"
        self.root = Path(workdir) / "published"
        self.previous = None
        self.history: list = []
        self.built = 0

    def release(self, gallery: GalleryData, publish_it: bool = True):
        self.built += 1
        # Like NightlyBuilder.older(): deltas also from the builds before the previous one.
        older = [(r.gallery_version, g) for r, g in reversed(self.history[:-1])][: nightly.DELTA_HISTORY - 1]
        record, info = write_build(
            open_store(self.build_out),
            gallery,
            self.previous,
            embedder=self.embedder,
            detector=DETECTOR,
            template="per_photo",
            sign=self.key.sign,
            now=T0 + timedelta(days=self.built),
            older=older,
        )
        self.previous = (record, gallery)
        self.history.append(self.previous)
        if publish_it:
            publish(str(self.build_out), str(self.root))
        return record, info
