"""Search engines: exact numpy against hnswlib, and the size-based choice."""

from __future__ import annotations

import numpy as np
import pytest

from edge_app.gallery.bundle import HNSW_INDEX
from edge_app.gallery.search import EXACT_MAX_VECTORS, ExactSearch, HnswSearch, build_search, choose_search, index_files
from tests.gallery_factory import unit


@pytest.fixture(scope="module")
def clustered():
    """Identities as cluster centres with several noisy vectors each, like real embeddings."""
    rng = np.random.default_rng(7)
    centres = unit(rng.normal(size=(400, 128)))
    vectors = unit(np.repeat(centres, 3, axis=0) + 0.08 * rng.normal(size=(1200, 128)))
    queries = unit(centres[:50] + 0.08 * rng.normal(size=(50, 128)))
    return vectors, queries


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def test_exact_search_returns_the_true_top_k_in_order(clustered):
    vectors, queries = clustered
    similarities, rows = ExactSearch(vectors).search(queries, 5)
    assert rows.shape == (50, 5)
    np.testing.assert_array_equal(rows, brute_force(vectors, queries, 5))
    assert np.all(np.diff(similarities, axis=1) <= 0)
    np.testing.assert_allclose(similarities[:, 0], np.einsum("ij,ij->i", queries, vectors[rows[:, 0]]), rtol=1e-5)


def test_exact_search_handles_k_larger_than_gallery_and_single_query(clustered):
    vectors, queries = clustered
    small = ExactSearch(vectors[:3])
    similarities, rows = small.search(queries[0], 10)
    assert rows.shape == (1, 3) and sorted(rows[0]) == [0, 1, 2]
    empty_sims, empty_rows = ExactSearch(np.zeros((0, 128), np.float32)).search(queries, 5)
    assert empty_rows.shape == (50, 0)


def test_wrong_query_dimension_is_a_clear_error(clustered):
    vectors, _ = clustered
    with pytest.raises(ValueError, match=r"shape \(n, 128\)"):
        ExactSearch(vectors).search(np.zeros((2, 64), np.float32), 1)


def test_hnsw_agrees_with_exact_and_survives_a_round_trip(clustered, tmp_path):
    vectors, queries = clustered
    hnsw = HnswSearch.build(vectors)
    exact_sims, exact_rows = ExactSearch(vectors).search(queries, 1)
    hnsw_sims, hnsw_rows = hnsw.search(queries, 1)
    assert np.mean(hnsw_rows[:, 0] == exact_rows[:, 0]) >= 0.98
    np.testing.assert_allclose(hnsw_sims[:, 0], exact_sims[:, 0], atol=1e-4)
    path = tmp_path / "index.hnsw"
    path.write_bytes(hnsw.to_bytes())
    loaded = HnswSearch.load(path, len(vectors), 128)
    np.testing.assert_array_equal(loaded.search(queries, 3)[1], hnsw.search(queries, 3)[1])
    with pytest.raises(ValueError, match="expected 5"):
        HnswSearch.load(path, 5, 128)


def test_choice_by_size_is_recorded_with_a_reason():
    small = choose_search(25_000)
    large = choose_search(EXACT_MAX_VECTORS + 1)
    assert small.engine == "exact" and "25000" in small.reason
    assert large.engine == "hnsw" and large.params["ef"] >= 100
    assert isinstance(build_search(np.eye(4, 128, dtype=np.float32), small), ExactSearch)
    assert isinstance(build_search(np.eye(4, 128, dtype=np.float32), large), HnswSearch)


def test_index_files_ship_an_hnsw_index_only_for_hnsw_specs(clustered, tmp_path):
    vectors, queries = clustered
    assert index_files(vectors, choose_search(len(vectors))) == {}
    spec = choose_search(EXACT_MAX_VECTORS + 1)
    files = index_files(vectors, spec)
    path = tmp_path / HNSW_INDEX
    path.write_bytes(files[HNSW_INDEX])
    engine = build_search(vectors, spec, path)
    np.testing.assert_array_equal(engine.search(queries, 1)[1], ExactSearch(vectors).search(queries, 1)[1])


def test_an_index_file_this_hnswlib_cannot_read_is_rebuilt_from_the_vectors(clustered, tmp_path, caplog):
    """A signed index in another hnswlib fork's format (hnswlib 0.8 and chroma-hnswlib cannot
    read each other's files) costs a rebuild on the device, not a refused gallery."""
    from edge_app.gallery.search import ExactSearch, build_search, choose_search

    vectors, queries = clustered
    spec = choose_search(10**9)
    unreadable = tmp_path / "index.hnsw"
    unreadable.write_bytes(b"\x00" * 4096)
    engine = build_search(vectors, spec, unreadable)
    assert "building the hnsw index from the vectors" in caplog.text
    assert (engine.search(queries, 1)[1] == ExactSearch(vectors).search(queries, 1)[1]).all()
