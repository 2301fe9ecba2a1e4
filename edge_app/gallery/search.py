"""Nearest-neighbour search over L2-normalised embeddings: one interface, two engines.

- ``ExactSearch``: cosine by matrix product in numpy. Perfect recall; fast enough
  up to a few hundred thousand vectors (benchmarks/bench_search.py).
- ``HnswSearch``: an hnswlib graph, for galleries where exact search is too slow.

``choose_search`` picks one by gallery size; the choice and its parameters go into
the bundle manifest (``SearchSpec``) so every device searches the same way.

Both take an optional ``rescore`` (a gallery's score normalisation, models/scoring.py):
exact search applies it to every row before choosing the top k; hnsw fetches the
``RESCORE_CANDIDATES`` nearest rows by cosine and ranks those by the rescored value.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from edge_app.gallery.bundle import HNSW_INDEX, SearchSpec

log = logging.getLogger(__name__)

# From benchmarks/bench_search.py (docs/recognition.md): one exact query takes about
# 1 ms at 25k vectors and 15-35 ms at 250k on one core, while hnswlib answers in
# under 1 ms with recall@1 of 1.0 at 250k. Exact stays below ~5 ms up to about 50k.
EXACT_MAX_VECTORS = 50_000
# The hnsw configuration measured at 1M real-like vectors: recall@1 0.993 against
# exact at 3.6 ms per query (ef 400: 0.987 at 1.9 ms); 529 s to build on 2 cores,
# about 650 bytes per vector in memory.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 100
HNSW_EF_SEARCH = 800
# Normalisation moves a row's score by a few hundredths against its cosine; the normalised
# best is among the 64 nearest rows by cosine unless thousands of rows sit within that.
RESCORE_CANDIDATES = 64
SMALL_K = 8

# rescore(cosines [q, m], rows [q, m] or None for all rows in order, queries [q, d]) -> scores [q, m]
Rescore = Callable[[np.ndarray, np.ndarray | None, np.ndarray], np.ndarray]


class SearchEngine(Protocol):
    size: int

    def search(self, queries: np.ndarray, k: int, rescore: Rescore | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` rows per query: (scores [q, k] descending, row indices [q, k])."""


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest per row, sorted descending: (scores, column indices)."""
    if k <= SMALL_K < scores.shape[1]:
        # A face needs its best one or two persons: k passes of argmax are ~15x cheaper than
        # argpartition over a 25,000-row gallery (0.018 vs 0.26 ms for k = 2).
        work = np.array(scores, dtype=np.float32, copy=True)
        rows = np.arange(len(work))
        top = np.empty((len(work), k), np.int64)
        for j in range(k):
            top[:, j] = work.argmax(axis=1)
            work[rows, top[:, j]] = -np.inf
        return np.take_along_axis(scores, top, axis=1), top
    if k < scores.shape[1]:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        top = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1).astype(np.int64)


def _as_queries(queries: np.ndarray, dimension: int) -> np.ndarray:
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim == 1:
        queries = queries[None, :]
    if queries.ndim != 2 or queries.shape[1] != dimension:
        raise ValueError(f"queries must have shape (n, {dimension}), got {queries.shape}")
    return queries


class ExactSearch:
    """Brute-force cosine search (vectors are unit length, so cosine is a dot product)."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.size, self.dimension = self.vectors.shape

    def search(self, queries: np.ndarray, k: int, rescore: Rescore | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_queries(queries, self.dimension)
        k = min(k, self.size)
        if k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        scores = queries @ self.vectors.T
        if rescore is not None:
            scores = rescore(scores, None, queries)
        return _top_k(scores, k)


class HnswSearch:
    """Approximate search with hnswlib (inner-product space on unit vectors)."""

    def __init__(self, index, size: int, dimension: int, ef: int):
        self.index = index
        self.size = size
        self.dimension = dimension
        self.index.set_ef(ef)

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef: int = HNSW_EF_SEARCH,
        threads: int = -1,
    ) -> HnswSearch:
        import hnswlib

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        size, dimension = vectors.shape
        index = hnswlib.Index(space="ip", dim=dimension)
        index.init_index(max_elements=max(size, 1), M=m, ef_construction=ef_construction, random_seed=100)
        if size:
            index.add_items(vectors, np.arange(size), num_threads=threads)
        return cls(index, size, dimension, ef)

    @classmethod
    def load(cls, path: Path, size: int, dimension: int, ef: int = HNSW_EF_SEARCH) -> HnswSearch:
        import hnswlib

        index = hnswlib.Index(space="ip", dim=dimension)
        index.load_index(str(path), max_elements=max(size, 1))
        if index.get_current_count() != size:
            raise ValueError(f"{path}: index holds {index.get_current_count()} vectors, expected {size}")
        return cls(index, size, dimension, ef)

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.hnsw")
            self.index.save_index(path)
            return Path(path).read_bytes()

    def search(self, queries: np.ndarray, k: int, rescore: Rescore | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_queries(queries, self.dimension)
        k = min(k, self.size)
        if k <= 0:
            empty = np.empty((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        fetch = k if rescore is None else min(self.size, max(k, RESCORE_CANDIDATES))
        # hnswlib needs ef >= k to return k results.
        self.index.set_ef(max(self.index.ef, fetch))
        labels, distances = self.index.knn_query(queries, k=fetch, num_threads=1)
        similarities, rows = (1.0 - distances).astype(np.float32), labels.astype(np.int64)
        if rescore is None:
            return similarities, rows
        scores, order = _top_k(rescore(similarities, rows, queries), k)
        return scores, np.take_along_axis(rows, order, axis=1)


def choose_search(size: int) -> SearchSpec:
    """The engine a gallery of ``size`` vectors should use, with the reason recorded."""
    if size <= EXACT_MAX_VECTORS:
        return SearchSpec(
            engine="exact",
            reason=f"{size} vectors <= {EXACT_MAX_VECTORS}: exact search is fast enough and has recall 1.0",
        )
    return SearchSpec(
        engine="hnsw",
        params={"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef": HNSW_EF_SEARCH},
        reason=f"{size} vectors > {EXACT_MAX_VECTORS}: exact search too slow per query; hnsw recall measured in bench_search",
    )


def build_search(vectors: np.ndarray, spec: SearchSpec, index_path: Path | None = None) -> SearchEngine:
    """The engine ``spec`` names, over ``vectors``; an hnsw index file is loaded if given."""
    if spec.engine == "exact":
        return ExactSearch(vectors)
    ef = int(spec.params.get("ef", HNSW_EF_SEARCH))
    if index_path is not None and Path(index_path).is_file():
        try:
            return HnswSearch.load(Path(index_path), vectors.shape[0], vectors.shape[1], ef)
        except (RuntimeError, ValueError) as error:
            # A signed index this hnswlib cannot read (another fork's file format): the
            # vectors are signed too, so build the same graph from them instead of refusing.
            log.warning("gallery: %s unusable (%s); building the hnsw index from the vectors", index_path, error)
    return HnswSearch.build(
        vectors,
        m=int(spec.params.get("M", HNSW_M)),
        ef_construction=int(spec.params.get("ef_construction", HNSW_EF_CONSTRUCTION)),
        ef=ef,
    )


def index_files(vectors: np.ndarray, spec: SearchSpec) -> dict[str, bytes]:
    """Files a bundle builder adds (``write_bundle(extra_files=...)``) so devices need not
    build the index themselves: an hnsw index for hnsw specs, nothing for exact."""
    if spec.engine != "hnsw":
        return {}
    index = HnswSearch.build(
        vectors,
        m=int(spec.params.get("M", HNSW_M)),
        ef_construction=int(spec.params.get("ef_construction", HNSW_EF_CONSTRUCTION)),
        ef=int(spec.params.get("ef", HNSW_EF_SEARCH)),
    )
    return {HNSW_INDEX: index.to_bytes()}
