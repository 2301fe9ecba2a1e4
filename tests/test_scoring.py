"""Score normalisation (S-norm against the shipped cohort) and how bundles declare it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_app.gallery.bundle import (
    BundleError,
    Manifest,
    ModelRef,
    PersonRow,
    ScoreSpec,
    SearchSpec,
    load_bundle,
    write_bundle,
)
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.search import HnswSearch
from models.scoring import Cohort, CohortError, SNorm, cohort_for, shipped_cohort, template_vector
from models.thresholds import threshold_for_gallery
from sync_service.gallery.enrol import score_spec
from tests.gallery_factory import unit

EMBEDDER = ModelRef(id="sface", sha256="a" * 64)
DETECTOR = ModelRef(id="yunet", sha256="b" * 64)


def test_cohort_statistics_equal_the_mean_and_std_over_the_cohort_itself():
    rng = np.random.default_rng(0)
    members = unit(rng.standard_normal((400, 16)) + 0.5)
    cohort = Cohort(members.mean(0).astype(np.float64), np.cov(members.T, bias=True), 0.1, 0.1)
    rows = unit(rng.standard_normal((5, 16)))
    mean, std = cohort.stats(rows)
    scores = rows @ members.T
    np.testing.assert_allclose(mean, scores.mean(1), atol=1e-5)
    np.testing.assert_allclose(std, scores.std(1), rtol=1e-4)


def test_snorm_is_symmetric_and_on_the_cosine_scale():
    cohort = shipped_cohort()
    rng = np.random.default_rng(1)
    a, b = unit(rng.standard_normal((3, 128))), unit(rng.standard_normal((4, 128)))
    ab = SNorm(cohort, b).scores(a @ b.T, None, a)
    ba = SNorm(cohort, a).scores(b @ a.T, None, b)
    np.testing.assert_allclose(ab, ba.T, atol=1e-5)
    # The definition, term by term: how unusual the cosine is for the row and for the face.
    (row_mean,), (row_std,) = cohort.stats(b[:1])
    (face_mean,), (face_std,) = cohort.stats(a[:1])
    cosine = float(a[0] @ b[0])
    z = (cosine - row_mean) / row_std + (cosine - face_mean) / face_std
    assert ab[0, 0] == pytest.approx(cohort.impostor_mean + 0.5 * cohort.impostor_std * z, abs=1e-5)


def test_the_cohort_round_trips_and_keeps_its_id():
    cohort = shipped_cohort()
    again = Cohort.from_bytes(cohort.to_bytes())
    assert again.id == cohort.id and again.impostor_std == cohort.impostor_std


@pytest.mark.parametrize("data", [b"", b"not a cohort", json.dumps({"mean": [1]}).encode()])
def test_a_malformed_cohort_file_is_a_clear_error(data):
    with pytest.raises(CohortError, match="not a cohort file|malformed"):
        Cohort.from_bytes(data, "x.npz")


def test_a_gallery_normalised_with_another_cohort_is_refused_with_the_reason():
    with pytest.raises(CohortError, match="update the device software"):
        cohort_for("cohort-0000000000000000")
    vectors = unit(np.random.default_rng(2).standard_normal((2, 128)))
    persons = {p: PersonRow(person_id=p) for p in ("a", "b")}
    with pytest.raises(BundleError, match="normalised with cohort-0000000000000000"):
        Gallery(vectors, ["a", "b"], persons, version="v", embedder=EMBEDDER,
                score=ScoreSpec(kind="snorm", cohort="cohort-0000000000000000"))  # fmt: skip


def test_template_vector_is_the_unit_mean_of_the_face_and_its_mirror():
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    np.testing.assert_allclose(template_vector(a, b), [2**-0.5, 2**-0.5], atol=1e-6)


def _gallery(persons: int, seed: int = 3, engine=None) -> tuple[Gallery, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((persons, 128)))
    labels = [f"p{i}" for i in range(persons)]
    rows = {p: PersonRow(person_id=p) for p in labels}
    spec = score_spec(persons)
    search = SearchSpec(engine="hnsw", params={"M": 16, "ef_construction": 100, "ef": 200}) if engine else None
    built = HnswSearch.build(vectors) if engine else None
    return Gallery(
        vectors, labels, rows, version="v", embedder=EMBEDDER, score=spec, search=search, engine=built
    ), vectors


def test_a_normalised_gallery_ranks_by_the_normalised_score_and_reports_it():
    gallery, vectors = _gallery(300)
    queries = unit(vectors[:5] + 0.9 * np.random.default_rng(4).standard_normal((5, 128)))
    norm = SNorm(shipped_cohort(), vectors)
    expected = norm.scores(queries @ vectors.T, None, queries)
    for query, matches, row in zip(queries, gallery.search(queries, k=3), expected, strict=True):
        best = np.argsort(-row)[:3]
        assert [m.person_id for m in matches] == [f"p{i}" for i in best]
        assert matches[0].similarity == pytest.approx(float(row[best[0]]), abs=1e-5)
        assert float(query @ vectors[best[0]]) != pytest.approx(matches[0].similarity, abs=1e-3)


def test_hnsw_search_rescores_its_candidates_like_exact_search():
    exact, vectors = _gallery(2_000, seed=5)
    approximate, _ = _gallery(2_000, seed=5, engine="hnsw")
    queries = unit(vectors[:20] + 0.7 * np.random.default_rng(6).standard_normal((20, 128)))
    for a, b in zip(exact.search(queries, k=1), approximate.search(queries, k=1), strict=True):
        assert a[0].person_id == b[0].person_id
        assert a[0].similarity == pytest.approx(b[0].similarity, abs=1e-5)


def test_the_gallery_threshold_is_the_manifests_else_the_table_for_its_size_and_score():
    gallery, _ = _gallery(120)
    assert gallery.threshold == threshold_for_gallery(120, score="snorm")
    assert gallery.track_threshold == threshold_for_gallery(120, score="track") == gallery.score.track_threshold
    vectors = unit(np.random.default_rng(7).standard_normal((3, 128)))
    persons = {p: PersonRow(person_id=p) for p in "abc"}
    plain = Gallery(vectors, list("abc"), persons, version="v", embedder=EMBEDDER)
    assert plain.threshold == plain.track_threshold == threshold_for_gallery(3, score="cosine")
    chosen = Gallery(vectors, list("abc"), persons, version="v", embedder=EMBEDDER,
                     score=ScoreSpec(kind="cosine", threshold=0.61))  # fmt: skip
    assert chosen.threshold == 0.61


def test_bundles_carry_the_score_in_format_2_and_format_1_bundles_still_load_as_cosine(tmp_path):
    vectors = unit(np.random.default_rng(8).standard_normal((2, 128)))
    persons = [PersonRow(person_id="a"), PersonRow(person_id="b")]
    fields = {"gallery_version": "v1", "detector": DETECTOR, "embedder": EMBEDDER}
    manifest = write_bundle(tmp_path / "new", manifest_fields={**fields, "score": score_spec(2)},
                            vectors=vectors, labels=["a", "b"], persons=persons)  # fmt: skip
    assert manifest.format_version == 2 and manifest.score.kind == "snorm"
    loaded = Gallery.from_bundle(load_bundle(tmp_path / "new"))
    assert loaded.threshold == threshold_for_gallery(2) and loaded.score.cohort == shipped_cohort().id
    old = write_bundle(tmp_path / "old", manifest_fields={**fields, "format_version": 1},
                       vectors=vectors, labels=["a", "b"], persons=persons)  # fmt: skip
    gallery = Gallery.from_bundle(load_bundle(tmp_path / "old"))
    assert old.format_version == 1 and gallery.score.kind == "cosine"
    assert gallery.threshold == threshold_for_gallery(2, score="cosine")


def test_a_format_1_manifest_cannot_claim_a_normalised_score():
    with pytest.raises(ValueError, match="format_version 1 has no score"):
        Manifest(format_version=1, gallery_version="v", detector=DETECTOR, embedder=EMBEDDER, dimension=128,
                 files={}, score=ScoreSpec(kind="snorm", cohort="cohort-x"))  # fmt: skip
    with pytest.raises(ValueError, match="must name its cohort"):
        ScoreSpec(kind="snorm")
