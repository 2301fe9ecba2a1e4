"""numpy's BLAS threads against OpenCV's on the device's per-frame path, side by side.

    python benchmarks/bench_blas_threads.py [--repeats 200] [--persons 25000]

The per-frame path is detect (YuNet), embed (SFace) and search the gallery (a matrix
product over every row, S-norm rescored). OpenCV runs the models on its own threads;
numpy's OpenBLAS runs the product on another pool whose threads keep spinning for a
while after each call, competing with OpenCV's for the same cores. ``FaceModels.load``
therefore limits BLAS to one thread (models/recognizer.py). This measures both settings
in one process, alternating blocks of 10 frames: BLAS threads = CPU count (numpy's
default) against 1. Prints one JSON document: median ms per stage and per frame for
each setting, and the ratio of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_recognition import frame_with_face, test_face  # noqa: E402
from edge_app.gallery.bundle import ModelRef, PersonRow  # noqa: E402
from edge_app.gallery.gallery import Gallery  # noqa: E402
from models.recognizer import FaceModels  # noqa: E402
from sync_service.gallery.enrol import score_spec  # noqa: E402

BLOCK = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200, help="frames per setting")
    parser.add_argument("--persons", type=int, default=25_000, help="gallery size (random unit vectors)")
    args = parser.parse_args()

    models = FaceModels.load()
    frame = frame_with_face(test_face(None), 640, 480)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(args.persons, models.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [f"p{i}" for i in range(args.persons)]
    persons = {label: PersonRow(person_id=label) for label in labels}
    gallery = Gallery(
        vectors,
        labels,
        persons,
        version="bench",
        embedder=ModelRef(**models.embedder_ref),
        score=score_spec(args.persons),
    )

    settings = {"blas_threads_cpu_count": os.cpu_count() or 1, "blas_threads_1": 1}
    samples = {name: {"detect": [], "embed": [], "search": [], "frame": []} for name in settings}

    def one_frame(into: dict) -> None:
        started = time.perf_counter()
        faces = models.detect(frame)
        detected = time.perf_counter()
        vector = models.embed(frame, faces[0])
        embedded = time.perf_counter()
        gallery.search(vector[None, :], k=2)
        searched = time.perf_counter()
        into["detect"].append(detected - started)
        into["embed"].append(embedded - detected)
        into["search"].append(searched - embedded)
        into["frame"].append(searched - started)

    for threads in settings.values():  # warm-up
        with threadpool_limits(limits=threads, user_api="blas"):
            one_frame({key: [] for key in ("detect", "embed", "search", "frame")})
    for _ in range(max(1, args.repeats // BLOCK)):
        for name, threads in settings.items():
            with threadpool_limits(limits=threads, user_api="blas"):
                for _ in range(BLOCK):
                    one_frame(samples[name])

    def medians(values: dict) -> dict:
        return {stage: round(statistics.median(times) * 1e3, 3) for stage, times in values.items()}

    result = {
        "persons": args.persons,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "frames_per_setting": len(samples["blas_threads_1"]["frame"]),
        "median_ms": {name: medians(values) for name, values in samples.items()},
    }
    default, single = result["median_ms"]["blas_threads_cpu_count"], result["median_ms"]["blas_threads_1"]
    result["ratio_default_over_single"] = {stage: round(default[stage] / single[stage], 3) for stage in default}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
