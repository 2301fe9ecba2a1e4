"""Frames dropped while the sync agent swaps galleries under a running frame loop; JSON on stdout.

    python benchmarks/bench_gallery_swap.py [--persons 25000] [--seconds 20] [--rounds 3] [--out FILE]

The frame loop is the device's per-frame path: the real capture thread
(``edge_app.pipeline.capture.Capture`` with a one-frame buffer, "newest frame wins",
paced in real time, so any stall longer than a frame interval drops a frame and is
counted; the device's default buffer of 3 frames would hide stalls up to 3 intervals), YuNet detection, SFace
embedding of each face and a top-5 search of ``LiveGallery.current()``. Frames are
the shared real test photos letterboxed to 640x480 (read in place, written only to a
temporary folder). The camera rate is set to half of what the loop sustains when
idle, so a baseline run drops (almost) nothing.

Three conditions, interleaved ``--rounds`` times on the same frames:
- ``baseline``: no sync activity;
- ``swapping``: the real ``SyncAgent`` (in its own thread, as inside ``mpd edge run``)
  applies a chain of 1%-churn deltas of a ``--persons`` gallery back to back, plus
  one full bundle, each verified, installed and swapped in with ``LiveGallery.swap_bundle``,
  from a thread at the agent's lowered priority (``lower_thread_priority``);
- ``swapping_default_priority``: the same at normal priority, to show what that costs.
The updates come back to back (several per run) as a stress test: a device sees one a night.
Reported: frames dropped by the capture thread, frames processed, swaps done, and the
per-frame time (median, p99, max) in each condition; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_gallery_link import mean_template  # noqa: E402
from tests.gallery_factory import Publisher, churn, synthetic_gallery  # noqa: E402

FACES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "faces" / "gallery"


def make_frames(folder: Path, count: int = 60) -> None:
    from models.images import load_image

    folder.mkdir(parents=True)
    photos = sorted(FACES.rglob("*.jpg"))[:count]
    for i, photo in enumerate(photos):
        image = load_image(photo)
        scale = min(640 / image.shape[1], 480 / image.shape[0])
        resized = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)))
        frame = np.zeros((480, 640, 3), np.uint8)
        frame[: resized.shape[0], : resized.shape[1]] = resized
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame)


def frame_work(models, live):
    def process(image: np.ndarray) -> None:
        faces = [f for f in models.detect(image) if f.score > 0.6]
        if faces:
            queries = np.stack([models.embed(image, face) for face in faces])
            live.current().search(queries, 5)

    return process


def run_condition(frames_dir: Path, fps: float, seconds: float, process, during=None) -> dict:
    from edge_app.pipeline.capture import Capture, FrameSource

    source = FrameSource(str(frames_dir))
    source.fps = fps
    frames = int(fps * seconds)
    # Loop the folder: list the files again so the capture runs for ``seconds``.
    source._images = (source._images * (frames // len(source._images) + 1))[:frames]
    capture = Capture("bench", source, realtime=True, buffer_frames=1)
    times: list[float] = []
    stop = threading.Event()
    background = threading.Thread(target=during, args=(stop,), daemon=True) if during else None
    capture.start()
    if background:
        background.start()
    while not capture.exhausted:
        frame = capture.take(0.5)
        if frame is None:
            continue
        started = time.perf_counter()
        process(frame.image)
        times.append(time.perf_counter() - started)
    stop.set()
    if background:
        background.join()
    ms = sorted(1000 * t for t in times)
    return {
        "frames_offered": capture.frames_read,
        "frames_processed": len(times),
        "frames_dropped": capture.dropped,
        "frame_ms_median": round(statistics.median(ms), 2),
        "frame_ms_p99": round(ms[int(0.99 * (len(ms) - 1))], 2),
        "frame_ms_max": round(ms[-1], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=25_000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--versions", type=int, default=6, help="deltas applied per swapping run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from edge_app.gallery.gallery import Gallery
    from edge_app.gallery.live import LiveGallery
    from edge_app.gallery.sync_agent import SyncAgent, lower_thread_priority
    from models.recognizer import FaceModels

    models = FaceModels.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_frames(tmp / "frames")
        publisher = Publisher(tmp / "cloud")
        gallery = mean_template(synthetic_gallery(args.persons, seed=1))
        pointers = []
        for step in range(2 * args.rounds * args.versions + 1):
            if step:
                gallery = churn(gallery, 0.01, seed=step)
            publisher.release(gallery)
            pointers.append((publisher.root / "latest.json").read_text())
        full_pointer = json.loads(pointers[-1]) | {"delta": None}
        full_root = tmp / "full-root"  # the newest full bundle alone, as a device with no gallery sees it
        full_root.mkdir()
        (full_root / full_pointer["gallery_version"]).symlink_to(publisher.root / full_pointer["gallery_version"])
        (full_root / "latest.json").write_text(json.dumps(full_pointer))

        device = tmp / "device"
        (publisher.root / "latest.json").write_text(pointers[0])
        first = SyncAgent(str(publisher.root), device, publisher.public_key)
        first.sync_once()
        live = LiveGallery(Gallery.from_bundle(first.dir.load()))
        agent = SyncAgent(str(publisher.root), device, publisher.public_key, on_swap=live.swap_bundle)
        process = frame_work(models, live)

        # Camera rate: half of what the loop sustains when idle.
        image = cv2.imread(str(sorted((tmp / "frames").iterdir())[0]))
        samples = []
        for _ in range(15):
            started = time.perf_counter()
            process(image)
            samples.append(time.perf_counter() - started)
        fps = round(0.5 / statistics.median(samples), 1)

        next_pointer = iter(pointers[1:])
        swaps: list[dict] = []

        def apply_updates(stop: threading.Event, count: int = args.versions, nice: bool = True) -> None:
            if nice:
                lower_thread_priority()  # what the agent's own thread does inside `mpd edge run`
            done = 0
            while not stop.is_set() and done < count:
                pointer = next(next_pointer, None)
                if pointer is None:
                    break
                (publisher.root / "latest.json").write_text(pointer)
                started = time.perf_counter()
                result = agent.sync_once()
                swaps.append(
                    {"kind": "delta", "status": result.status, "seconds": round(time.perf_counter() - started, 3)}
                )
                done += 1
            if not stop.is_set():  # and one full bundle into a fresh directory, swapped into the same live gallery
                fresh_dir = tmp / f"fresh-{len(swaps)}"
                fresh = SyncAgent(str(full_root), fresh_dir, publisher.public_key, on_swap=live.swap_bundle)
                started = time.perf_counter()
                result = fresh.sync_once()
                swaps.append(
                    {"kind": "full", "status": result.status, "seconds": round(time.perf_counter() - started, 3)}
                )
                shutil.rmtree(fresh_dir, ignore_errors=True)

        def not_niced(stop: threading.Event) -> None:
            apply_updates(stop, nice=False)

        runs = {"baseline": [], "swapping": [], "swapping_default_priority": []}
        for _ in range(args.rounds):
            runs["baseline"].append(run_condition(tmp / "frames", fps, args.seconds, process))
            for name, during in (("swapping", apply_updates), ("swapping_default_priority", not_niced)):
                before = len(swaps)
                result = run_condition(tmp / "frames", fps, args.seconds, process, during=during)
                result["swaps"] = len(swaps) - before
                runs[name].append(result)

    def medians(rows: list[dict]) -> dict:
        return {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    report = {
        "persons": args.persons,
        "camera_fps": fps,
        "idle_frame_ms_median": round(1000 * statistics.median(samples), 2),
        "seconds_per_run": args.seconds,
        "rounds": args.rounds,
        "median": {name: medians(rows) for name, rows in runs.items()},
        "runs": runs,
        "swaps": swaps,
        "swaps_failed": sum(1 for s in swaps if s["status"] != "installed"),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
