"""The in-memory Gallery: built from a bundle, batched per-person search, identify with a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.gallery.bundle import (
    HNSW_INDEX,
    BundleError,
    ModelRef,
    PersonRow,
    SearchSpec,
    load_bundle,
    write_bundle,
)
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.search import HnswSearch
from tests.gallery_factory import unit

EMBEDDER = ModelRef(id="sface_2021dec_int8bq", sha256="b" * 64)
DETECTOR = ModelRef(id="yunet_2023mar_int8bq", sha256="a" * 64)


@pytest.fixture()
def people():
    rng = np.random.default_rng(3)
    centres = unit(rng.normal(size=(6, 128)))
    # Person p0 has three photos, the others one: results must be per person, not per row.
    labels = ["p0", "p0", "p0", "p1", "p2", "p3", "p4", "p5"]
    rows = [0, 0, 0, 1, 2, 3, 4, 5]
    vectors = unit(centres[rows] + 0.05 * rng.normal(size=(8, 128)))
    persons = {f"p{i}": PersonRow(person_id=f"p{i}", display_name=f"Person {i}", case_id=f"C{i}") for i in range(6)}
    return vectors, labels, persons, centres


def write(tmp_path, vectors, labels, persons, search=None, extra=None):
    fields = {"gallery_version": "2026-11-29.1", "detector": DETECTOR, "embedder": EMBEDDER}
    if search is not None:
        fields["search"] = search
    write_bundle(
        tmp_path, manifest_fields=fields, vectors=vectors, labels=labels, persons=persons.values(), extra_files=extra
    )
    return load_bundle(tmp_path)


def test_from_bundle_exposes_version_model_and_persons(tmp_path, people):
    vectors, labels, persons, _ = people
    gallery = Gallery.from_bundle(write(tmp_path, vectors, labels, persons))
    assert gallery.version == "2026-11-29.1" and gallery.model_id == "sface_2021dec_int8bq"
    assert gallery.size == 8 and len(gallery) == 6
    assert gallery.person("p3").case_id == "C3"
    with pytest.raises(KeyError, match="not in gallery 2026-11-29.1"):
        gallery.person("nobody")


def test_batched_search_gives_distinct_persons_best_first(tmp_path, people):
    vectors, labels, persons, centres = people
    gallery = Gallery.from_bundle(write(tmp_path, vectors, labels, persons))
    results = gallery.search(centres[[0, 4]], k=3)
    assert [r[0].person_id for r in results] == ["p0", "p4"]
    for matches in results:
        ids = [m.person_id for m in matches]
        assert len(ids) == 3 and len(set(ids)) == 3
        assert all(a.similarity >= b.similarity for a, b in zip(matches, matches[1:], strict=False))
    assert gallery.search(np.zeros((0, 128), np.float32)) == []


def test_identify_applies_the_threshold(tmp_path, people):
    vectors, labels, persons, centres = people
    gallery = Gallery.from_bundle(write(tmp_path, vectors, labels, persons))
    stranger = unit(np.random.default_rng(99).normal(size=(1, 128)))
    known, unknown = gallery.identify(np.vstack([centres[2:3], stranger]), threshold=0.5)
    assert known.person_id == "p2" and known.similarity > 0.8
    assert unknown is None


def test_hnsw_bundle_uses_its_stored_index(tmp_path, people):
    vectors, labels, persons, centres = people
    spec = SearchSpec(engine="hnsw", params={"M": 16, "ef_construction": 100, "ef": 50}, reason="test")
    index = HnswSearch.build(vectors, m=16, ef_construction=100, ef=50).to_bytes()
    gallery = Gallery.from_bundle(write(tmp_path, vectors, labels, persons, spec, {HNSW_INDEX: index}))
    assert isinstance(gallery.engine, HnswSearch)
    assert gallery.identify(centres[5:6], threshold=0.5)[0].person_id == "p5"


def test_labels_without_person_rows_are_refused(people):
    vectors, labels, persons, _ = people
    del persons["p1"]
    with pytest.raises(BundleError, match="without a person row.*p1"):
        Gallery(vectors, labels, persons, version="v", embedder=EMBEDDER)


def test_a_delta_bundle_is_not_a_gallery(tmp_path, people):
    vectors, labels, persons, _ = people
    fields = {
        "kind": "delta",
        "base_version": "v0",
        "gallery_version": "v1",
        "detector": DETECTOR,
        "embedder": EMBEDDER,
    }
    write_bundle(tmp_path, manifest_fields=fields, vectors=vectors, labels=labels, persons=persons.values(), removed=[])
    with pytest.raises(BundleError, match="delta bundle"):
        Gallery.from_bundle(load_bundle(tmp_path))
