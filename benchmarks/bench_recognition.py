"""Per-stage recognition timings on this machine; JSON on stdout.

    python benchmarks/bench_recognition.py [--repeats 60] [--image PATH] [--skip-identify] [--persons 25000]

Stages (each a median and p95 over ``--repeats`` runs, after a warm-up):
- detect at 640x480 and 1280x720 (``FaceModels.detect``), and the raw YuNet call;
- align + embed per face (``FaceModels.embed``), and the raw alignCrop + feature calls;
- detect + embed of one face in a 640x480 frame (target: 40 ms median or less);
- the whole ``identify`` path per face (decode-free: detect thorough, gate, embed,
  search a ``--persons`` (25,000) gallery with normalised scores, and one with raw cosine for
  comparison) against the sum of the raw model calls on the same
  frame, measured interleaved in the same loop: the overhead ratio.

The test face is scikit-image's ``astronaut`` (NASA, public domain) unless ``--image``
is given. The machine is shared: compare ratios from one run, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # search is measured single-threaded

import cv2  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.images import load_image  # noqa: E402
from models.recognizer import FaceModels  # noqa: E402


def summary(samples_s: list[float]) -> dict:
    ms = sorted(1000 * s for s in samples_s)
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 3),
        "n": len(ms),
    }


def timed(function, repeats: int) -> list[float]:
    function()  # warm-up
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return samples


def test_face(path: Path | None) -> np.ndarray:
    if path is not None:
        return load_image(path)
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def frame_with_face(face: np.ndarray, width: int, height: int) -> np.ndarray:
    """The photo scaled to a third of the frame height, on a grey frame (one face of ~80-110 px)."""
    frame = np.full((height, width, 3), 110, np.uint8)
    scale = (height * 0.6) / face.shape[0]
    small = cv2.resize(face, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    h, w = small.shape[:2]
    y, x = (height - h) // 2, (width - w) // 2
    frame[y : y + h, x : x + w] = small[:, : min(w, width)]
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--image", type=Path, help="photo with one face (default: skimage astronaut)")
    parser.add_argument("--skip-identify", action="store_true", help="models only (for a venv without the app)")
    parser.add_argument("--threads", type=int, help="OpenCV threads (default: OpenCV's choice)")
    parser.add_argument("--persons", type=int, default=25_000, help="gallery size for the identify path")
    args = parser.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)

    models = FaceModels.load()
    face_photo = test_face(args.image)
    frames = {size: frame_with_face(face_photo, *size) for size in ((640, 480), (1280, 720))}
    frame = frames[(640, 480)]
    faces = models.detect(frame)
    if len(faces) != 1:
        raise SystemExit(f"expected one face in the 640x480 test frame, found {len(faces)}")
    face = faces[0]
    detector, recognizer = models._detector, models._recognizer  # raw calls, for the overhead ratio

    def raw_detect(image: np.ndarray) -> None:
        detector.setInputSize((image.shape[1], image.shape[0]))
        detector.detect(image)

    row = face.as_yunet_row()
    results: dict = {
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "cpu_count": os.cpu_count(),
        "face_box": [round(v, 1) for v in face.box],
        "stages": {},
    }
    stages = results["stages"]
    for (width, height), image in frames.items():
        stages[f"detect_{width}x{height}"] = summary(timed(lambda image=image: models.detect(image), args.repeats))
        stages[f"raw_yunet_{width}x{height}"] = summary(timed(lambda image=image: raw_detect(image), args.repeats))
    stages["align_embed_per_face"] = summary(timed(lambda: models.embed(frame, face), args.repeats))
    stages["raw_aligncrop"] = summary(timed(lambda: recognizer.alignCrop(frame, row), args.repeats))
    crop = recognizer.alignCrop(frame, row)
    stages["raw_sface_feature"] = summary(timed(lambda: recognizer.feature(crop), args.repeats))
    stages["gate_per_face"] = summary(timed(lambda: models.gate([face], frame), args.repeats))

    def detect_and_embed() -> None:
        found = models.detect(frame)
        models.embed(frame, found[0])

    stages["detect_plus_embed_640x480"] = summary(timed(detect_and_embed, args.repeats))
    results["target_detect_plus_embed_ms"] = 40.0
    results["meets_target"] = stages["detect_plus_embed_640x480"]["median_ms"] <= 40.0

    if not args.skip_identify:
        results["identify_overhead"] = identify_overhead(models, frame, row, raw_detect, args.repeats, args.persons)
    print(json.dumps(results, indent=2))


def identify_overhead(
    models: FaceModels, frame: np.ndarray, row: np.ndarray, raw_detect, repeats: int, size: int = 25_000
) -> dict:
    """The identify path per face against the sum of raw model calls, interleaved in one loop."""
    from edge_app.gallery.bundle import ModelRef, PersonRow
    from edge_app.gallery.gallery import Gallery
    from edge_app.identify import identify_image

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(size, models.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = [f"p{i}" for i in range(size)]
    persons = {label: PersonRow(person_id=label) for label in labels}
    from sync_service.gallery.enrol import score_spec

    embedder = ModelRef(**models.embedder_ref)
    # What builders ship (scores normalised against the cohort), and raw cosine beside it.
    gallery = Gallery(vectors, labels, persons, version="bench", embedder=embedder, score=score_spec(size))
    plain = Gallery(vectors, labels, persons, version="bench-plain", embedder=embedder)
    recognizer = models._recognizer

    def raw_calls() -> None:
        raw_detect(frame)
        recognizer.feature(recognizer.alignCrop(frame, row))

    def whole_path() -> None:
        identify_image(models, gallery, frame, threshold=0.8)

    def whole_path_plain() -> None:
        identify_image(models, plain, frame, threshold=0.8)

    raw_calls(), whole_path(), whole_path_plain()
    raw, whole, whole_plain = [], [], []
    for _ in range(repeats):
        for function, samples in ((raw_calls, raw), (whole_path, whole), (whole_path_plain, whole_plain)):
            started = time.perf_counter()
            function()
            samples.append(time.perf_counter() - started)
    return {
        "gallery_persons": size,
        "identify_path_per_face": summary(whole),
        "sum_of_raw_model_calls": summary(raw),
        "overhead_ratio_of_medians": round(statistics.median(whole) / statistics.median(raw), 3),
        "identify_path_raw_cosine_gallery": summary(whole_plain),
        "overhead_ratio_raw_cosine_gallery": round(statistics.median(whole_plain) / statistics.median(raw), 3),
    }


if __name__ == "__main__":
    main()
