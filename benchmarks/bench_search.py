"""Exact numpy search against hnswlib at gallery sizes of 25k, 250k and 1M; JSON on stdout.

    python benchmarks/bench_search.py [--sizes 25000,250000,1000000] [--real EMBEDDINGS.npz]
        [--efs 50,100,200,400] [--queries 300] [--hnsw-max 1000000]

Real-like data, not uniform noise: identities are cluster centres and each has
several vectors, drawn to match real SFace statistics. With ``--real`` (the cache
benchmarks/accuracy.py writes) or the shared photos, the generator takes the mean
and covariance of real identity centres (so vectors live in the same low-dimensional
subspace) and the real within-identity spread. Queries are a new vector of a
gallery identity (the device's case: a new photo of someone enrolled).

Per size and engine: build time, memory (matrix or index bytes), single-query
latency median and p95 (one thread), recall@1 against exact search. hnswlib builds
with 2 threads; a 1M build takes a long time on 2 cores (``--hnsw-max`` skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a device searches on one core

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_app.gallery.search import HNSW_EF_CONSTRUCTION, HNSW_M, ExactSearch, HnswSearch  # noqa: E402

PER_IDENTITY = 3


def real_statistics(path: Path | None) -> dict:
    """Mean and covariance of real identity centres, and the real within-identity spread."""
    if path is not None and path.is_file():
        data = np.load(path, allow_pickle=False)
        vectors, identities = data["vectors"], data["identities"]
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from accuracy import DEFAULT_FACES, embed_dataset

        from models.recognizer import FaceModels

        data = embed_dataset(DEFAULT_FACES, FaceModels.load())
        vectors, identities = data["vectors"], data["identities"]
    names = np.unique(identities)
    centres = np.stack([vectors[identities == name].mean(axis=0) for name in names])
    # Spread around the centre from identities with 2+ photos, corrected for the
    # centre being estimated from the same photos (n / (n - 1)).
    squared, dof = 0.0, 0
    for name in names:
        members = vectors[identities == name]
        if len(members) >= 2:
            squared += float(np.sum((members - members.mean(axis=0)) ** 2))
            dof += (len(members) - 1) * vectors.shape[1]
    same = identities[:, None] == identities[None, :]
    upper = np.triu(np.ones_like(same), k=1).astype(bool)
    return {
        "mean": centres.mean(axis=0),
        "cov": np.cov(centres, rowvar=False),
        "within_sd": float(np.sqrt(squared / dof)),
        "genuine_pair_median": float(np.median((vectors @ vectors.T)[same & upper])),
        "real_vectors": int(len(vectors)),
        "real_identities": int(len(names)),
    }


def match_genuine_spread(stats: dict) -> None:
    """Scale the within-identity spread so synthetic photo pairs of one identity have the
    real median cosine (real identities vary more than one pooled spread suggests)."""
    low, high = 0.2 * stats["within_sd"], 5 * stats["within_sd"]
    for _ in range(20):
        stats["within_sd"] = (low + high) / 2
        gallery, probe, targets = make_gallery(3000, stats, 500, seed=1)
        median = float(np.median(np.einsum("ij,ij->i", probe, gallery[targets * PER_IDENTITY])))
        low, high = (stats["within_sd"], high) if median > stats["genuine_pair_median"] else (low, stats["within_sd"])


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_gallery(size: int, stats: dict, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gallery vectors, query vectors, the identity index of each query)."""
    rng = np.random.default_rng(seed)
    identities = size // PER_IDENTITY
    dimension = len(stats["mean"])
    # Centres from the real centres' distribution, with a little isotropic noise so
    # 300k identities are not confined to the ~75-dimensional span of 75 real ones.
    chol = np.linalg.cholesky(stats["cov"] + 1e-4 * np.eye(dimension))
    centres = np.empty((identities, dimension), np.float32)
    for start in range(0, identities, 100_000):
        stop = min(identities, start + 100_000)
        centres[start:stop] = stats["mean"] + rng.standard_normal((stop - start, dimension)) @ chol.T
    gallery = np.empty((identities * PER_IDENTITY, dimension), np.float32)
    for start in range(0, identities, 100_000):
        stop = min(identities, start + 100_000)
        block = np.repeat(centres[start:stop], PER_IDENTITY, axis=0)
        noise = stats["within_sd"] * rng.standard_normal(block.shape).astype(np.float32)
        gallery[start * PER_IDENTITY : stop * PER_IDENTITY] = unit(block + noise)
    targets = rng.choice(identities, size=queries, replace=False)
    probe = unit(centres[targets] + stats["within_sd"] * rng.standard_normal((queries, dimension)))
    return gallery, probe, targets


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def latencies(engine, probe: np.ndarray) -> tuple[dict, np.ndarray]:
    engine.search(probe[:1], 1)
    samples, rows = [], []
    for query in probe:
        started = time.perf_counter()
        _, found = engine.search(query, 1)
        samples.append(time.perf_counter() - started)
        rows.append(found[0, 0])
    ms = sorted(1000 * s for s in samples)
    stats = {"median_ms": round(statistics.median(ms), 4), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 4)}
    return stats, np.asarray(rows)


def bench_size(size: int, stats: dict, args) -> dict:
    gallery, probe, targets = make_gallery(size, stats, args.queries)
    real_like = {
        "genuine_cosine_median": round(
            float(np.median(np.einsum("ij,ij->i", probe, gallery[targets * PER_IDENTITY]))), 3
        ),
        "impostor_cosine_median": round(float(np.median(probe[:50] @ gallery[::997].T)), 3),
    }
    result: dict = {"vectors": size, "identities": size // PER_IDENTITY, "real_like": real_like}
    exact = ExactSearch(gallery)
    exact_latency, exact_rows = latencies(exact, probe)
    batch = probe[:4]
    started = time.perf_counter()
    for _ in range(10):
        exact.search(batch, 1)
    result["exact"] = {
        "build_s": 0.0,
        "memory_mb": round(gallery.nbytes / 1e6, 1),
        **exact_latency,
        "batch_of_4_per_query_ms": round(1000 * (time.perf_counter() - started) / 40, 4),
        "recall_at_1": 1.0,
        "identity_hit_rate": round(float(np.mean(exact_rows // PER_IDENTITY == targets)), 4),
    }
    if size > args.hnsw_max:
        result["hnsw"] = {"skipped": f"size above --hnsw-max {args.hnsw_max}"}
        return result
    before = rss_bytes()
    started = time.perf_counter()
    hnsw = HnswSearch.build(gallery, m=args.m, ef_construction=args.ef_construction, threads=2)
    build_s = time.perf_counter() - started
    result["hnsw"] = {
        "M": args.m,
        "ef_construction": args.ef_construction,
        "build_s": round(build_s, 1),
        "build_vectors_per_s": round(size / build_s),
        "rss_growth_mb": round((rss_bytes() - before) / 1e6, 1),
        "by_ef": [],
    }
    for ef in args.efs:
        hnsw.index.set_ef(ef)
        latency, rows = latencies(hnsw, probe)
        result["hnsw"]["by_ef"].append(
            {"ef": ef, **latency, "recall_at_1": round(float(np.mean(rows == exact_rows)), 4)}
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25000,250000,1000000")
    parser.add_argument("--real", type=Path, help="npz written by benchmarks/accuracy.py --cache")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--efs", default="100,400,800")
    parser.add_argument("--m", type=int, default=HNSW_M)
    parser.add_argument("--ef-construction", type=int, default=HNSW_EF_CONSTRUCTION)
    parser.add_argument("--hnsw-max", type=int, default=1_000_000)
    args = parser.parse_args()
    args.efs = [int(v) for v in args.efs.split(",")]
    stats = real_statistics(args.real)
    pooled_sd = stats["within_sd"]
    match_genuine_spread(stats)
    report = {
        "real_statistics": {
            **{k: stats[k] for k in ("real_vectors", "real_identities", "genuine_pair_median")},
            "within_sd_pooled": pooled_sd,
            "within_sd_used": stats["within_sd"],
        },
        "per_identity": PER_IDENTITY,
        "threads": {"blas": os.environ.get("OPENBLAS_NUM_THREADS"), "hnsw_query": 1, "hnsw_build": 2},
        "sizes": [],
    }
    for size in (int(v) for v in args.sizes.split(",")):
        report["sizes"].append(bench_size(size, stats, args))
        print(json.dumps(report["sizes"][-1]), file=sys.stderr)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
