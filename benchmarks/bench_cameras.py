"""Cameras per device: one ``mpd edge run`` serving N cameras at 10 fps each, with and without
motion gating, on a realistic mostly-empty scene.

    .venv/bin/python benchmarks/bench_cameras.py [--cameras 8 12 16 20 24] [--repeats 3] [--synchronized]
        [--buffer-frames 3] [--out result.json]

The scene (generated with demo/scenes.py from the shared face photos): 30 s at 10 fps,
640x480, an empty yard with a slow light change and sensor noise, one gallery member
crossing it for 3 s (10% of the frames). Every camera plays such a video paced at its own
rate (``--realtime``, like a camera: frames are dropped when the device falls behind).
By default the cameras see the member at different times, as cameras at a site do: camera
i plays the scene rotated so the member walks in at one of 10 moments spread over the 30 s
(never across the end), so at any moment about a tenth of them see someone. ``--synchronized`` plays the same video on every camera (everyone appears on every
camera at once: the worst case for motion gating).

For each camera count the gated and the ungated run follow each other (the order
alternates between repeats), so both see the same machine load; the load average is
recorded before and after every run. ``--buffer-frames 1 3`` runs each mode with each
camera buffer size (``capture.buffer_frames``; 1 is "newest frame wins"), side by side, and
names the modes ``gated/buffer=1`` etc. Prints one JSON document:

- per camera count and mode: frames dropped (% of frames read, median over repeats),
  frames skipped for no motion, events (one per camera expected), time to confirm (video
  seconds from the member's first visible frame to the confirming frame; median over
  cameras, then over repeats), first frame -> outbox latency, CPU cores used;
- ``max_cameras_at_1pct_drop``: the largest camera count tried whose median drop is at most 1%;
- ``time_to_confirm_gated_minus_ungated_s`` per camera count;
- ``cpu_per_frame``: the same cameras read losslessly (no pacing, nothing dropped), CPU
  milliseconds the device spends per camera frame, gated and ungated, and from it the
  cameras at 10 fps that ``cpu_count`` cores can serve. CPU time, unlike drops, hardly
  depends on what else runs on the machine, so this estimate holds on a shared machine;
  the paced runs show what this machine delivered with its load at the time.

Needs the shared face photos (../shared/data/faces). The machine may be shared: medians,
side-by-side comparisons and the recorded load averages are the figures to trust.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo.scenes import make_scene, walk  # noqa: E402
from edge_app.gallery.bundle import ModelRef, write_bundle  # noqa: E402
from models.recognizer import FaceModels  # noqa: E402

FACES = Path(os.environ.get("MPD_SHARED_DATA", REPO.parent / "shared" / "data")) / "faces"
FPS = 10
SECONDS = 30.0
MEMBER = "barack_obama"
GALLERY = ["barack_obama", "george_clooney", "katy_perry", "matt_damon", "kit_harington", "melissa_rauch"]


def photos(identity: str) -> list[Path]:
    folder = FACES / "gallery" / identity
    return sorted(folder.iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)


def build_bundle(models: FaceModels, out: Path) -> Path:
    from sync_service.gallery.enrol import build_gallery

    vectors, labels, persons, _ = build_gallery(models, {m: photos(m)[:-1][:3] for m in GALLERY}, {}, progress=False)
    fields = {"detector": ModelRef(**models.detector_ref), "embedder": ModelRef(**models.embedder_ref)}
    write_bundle(out, manifest_fields={"gallery_version": "bench-cameras", **fields},
                 vectors=vectors, labels=labels, persons=persons)  # fmt: skip
    return out


SHIFTS = 10  # distinct rotations of the scene


def mostly_empty_scenes(models: FaceModels, work: Path) -> list[tuple[Path, int]]:
    """The scene rotated ``SHIFTS`` ways: (video, the member's first visible frame) each."""
    import cv2

    out = work / "scene-0.avi"
    actors = [walk(photos(MEMBER)[-1], MEMBER, 13.0, 3.0, face_px=(90, 110), light=(0.9, 1.1))]
    truth = make_scene(actors, out, seconds=SECONDS, fps=FPS, models=models, seed=11, light_wave=0.2)
    first, last = truth.appearances()[MEMBER]
    reader = cv2.VideoCapture(str(out))
    frames = []
    while (item := reader.read())[0]:
        frames.append(item[1])
    reader.release()
    scenes = []
    room = len(frames) - (last - first) - 10  # where the walk can start without wrapping
    for shift in range(SHIFTS):
        target = 5 + shift * room // SHIFTS
        offset = 0 if shift == 0 else first - target  # new frame j is old frame (j + offset) mod n
        path = work / f"scene-{shift}.avi"
        if shift:
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
            for frame in frames[offset:] + frames[:offset]:
                writer.write(frame)
            writer.release()
        scenes.append((path, first if shift == 0 else target))
    return scenes


def run(
    bundle: Path,
    scenes: list[Path],
    gated: bool,
    work: Path,
    realtime: bool = True,
    max_frames: int | None = None,
    buffer_frames: int | None = None,
) -> dict:
    cameras = len(scenes)
    config = work / f"edge-{cameras}-{gated}.json"
    config.write_text(json.dumps({
        "device_id": "bench", "publisher": "file", "file_path": str(work / "events.jsonl"),
        "outbox": {"path": str(work / f"outbox-{cameras}-{gated}" / "o.sqlite3")},
        "health_interval_s": 3600, "motion": {"enabled": gated},
        "capture": {} if buffer_frames is None else {"buffer_frames": buffer_frames},
    }))  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "mpd_cli",
        "edge",
        "run",
        "--bundle",
        str(bundle),
        "--allow-unsigned",
        "--config",
        str(config),
    ] + (["--realtime"] if realtime else [])
    command += [arg for scene in scenes for arg in ("--source", str(scene))]
    command += ["--max-frames", str(max_frames)] if max_frames else []
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=SECONDS * 10)
    wall = time.monotonic() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"mpd edge run failed: {done.stderr[-2000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"summary": summary, "wall_s": wall, "cpu_cores": cpu / wall, "load_before": load_before,
            "load_after": os.getloadavg()}  # fmt: skip


def figures(result: dict, first_visible: list[int]) -> dict:
    """``first_visible[i]``: the member's first visible frame on camera ``cam{i}``."""
    summary = result["summary"]
    cameras = len(first_visible)
    confirmed = {}
    for event in summary["confirmed_at"]:
        if event["person_id"] == MEMBER:
            confirmed.setdefault(event["camera_id"], event)
    to_confirm = [
        (e["confirm_frame"] - first_visible[int(camera.removeprefix("cam"))]) / FPS for camera, e in confirmed.items()
    ]
    return {
        "frames_read": summary["frames_read"],
        "dropped_pct": round(100 * summary["frames_dropped"] / max(1, summary["frames_read"]), 2),
        "skipped_no_motion_pct": round(
            100 * summary["frames_skipped_no_motion"] / max(1, summary["frames_processed"]), 1
        ),  # fmt: skip
        "cameras_confirmed": len(confirmed),
        "cameras": cameras,
        "events": summary["events"],
        "time_to_confirm_s_median": round(statistics.median(to_confirm), 3) if to_confirm else None,
        "latency_s_median": summary["latency_s"]["median"],
        "cpu_cores": round(result["cpu_cores"], 2),
        "load_before": [round(x, 2) for x in result["load_before"]],
        "load_after": [round(x, 2) for x in result["load_after"]],
    }


def median_of(runs: list[dict], key: str) -> float | None:
    values = [run[key] for run in runs if run[key] is not None]
    return round(statistics.median(values), 3) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cameras", type=int, nargs="+", default=[8, 12, 16, 20, 24])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--synchronized", action="store_true", help="the same video on every camera")
    parser.add_argument("--cpu-cameras", type=int, default=4, help="cameras in the lossless CPU-per-frame runs")
    parser.add_argument(
        "--buffer-frames", type=int, nargs="+", help="camera buffer sizes to compare (default: the config's)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    buffers = args.buffer_frames or [None]

    def mode_name(gated: bool, buffer: int | None) -> str:
        name = "gated" if gated else "ungated"
        return name if len(buffers) == 1 else f"{name}/buffer={buffer}"

    if not (FACES / "gallery").is_dir():
        sys.exit(f"shared face photos not found at {FACES}")
    models = FaceModels.load()
    with tempfile.TemporaryDirectory(prefix="bench-cameras-") as tmp:
        work = Path(tmp)
        bundle = build_bundle(models, work / "bundle")
        scenes = mostly_empty_scenes(models, work)
        modes = [(gated, buffer) for gated in (True, False) for buffer in buffers]
        runs = {n: {mode_name(*mode): [] for mode in modes} for n in args.cameras}
        cpu: dict[str, list[float]] = {"gated": [], "ungated": []}
        lossless = [scenes[0 if args.synchronized else i % SHIFTS][0] for i in range(args.cpu_cameras)]
        for repeat in range(args.repeats):
            for gated in [True, False] if repeat % 2 == 0 else [False, True]:
                # Start-up (models, gallery) is not per-frame work: a 1-frame run measures it.
                startup = run(bundle, lossless, gated, work, realtime=False, max_frames=1)
                result = run(bundle, lossless, gated, work, realtime=False)
                frames = result["summary"]["frames_processed"] - startup["summary"]["frames_processed"]
                cpu_s = result["cpu_cores"] * result["wall_s"] - startup["cpu_cores"] * startup["wall_s"]
                cpu_ms = 1000 * cpu_s / max(1, frames)
                cpu["gated" if gated else "ungated"].append(round(cpu_ms, 2))
                print(json.dumps({"repeat": repeat, "gated": gated, "lossless_frames": frames,
                                  "cpu_ms_per_frame": round(cpu_ms, 2), "load": os.getloadavg()}),
                      file=sys.stderr, flush=True)  # fmt: skip
            for cameras in args.cameras:
                order = modes if (repeat + cameras) % 2 == 0 else modes[::-1]
                chosen = [scenes[0 if args.synchronized else i % SHIFTS] for i in range(cameras)]
                for gated, buffer in order:
                    result = run(bundle, [path for path, _ in chosen], gated, work, buffer_frames=buffer)
                    row = figures(result, [first for _, first in chosen])
                    runs[cameras][mode_name(gated, buffer)].append(row)
                    print(json.dumps({"repeat": repeat, "mode": mode_name(gated, buffer), **row}),
                          file=sys.stderr, flush=True)  # fmt: skip
    report = {"scene": {"seconds": SECONDS, "fps": FPS, "size": [640, 480], "member_visible_pct": 10,
                        "synchronized": args.synchronized}, "cpu_count": os.cpu_count(), "by_cameras": {}}  # fmt: skip
    best = {mode_name(*mode): 0 for mode in modes}
    for cameras, modes in runs.items():
        entry = {}
        for mode, rows in modes.items():
            entry[mode] = {
                "dropped_pct_median": median_of(rows, "dropped_pct"),
                "skipped_no_motion_pct_median": median_of(rows, "skipped_no_motion_pct"),
                "cameras_confirmed_min": min(row["cameras_confirmed"] for row in rows),
                "time_to_confirm_s_median": median_of(rows, "time_to_confirm_s_median"),
                "latency_s_median": median_of(rows, "latency_s_median"),
                "cpu_cores_median": median_of(rows, "cpu_cores"),
                "runs": rows,
            }
            if entry[mode]["dropped_pct_median"] <= 1.0:
                best[mode] = max(best[mode], cameras)
        for buffer in buffers:
            gated_t = entry[mode_name(True, buffer)]["time_to_confirm_s_median"]
            ungated_t = entry[mode_name(False, buffer)]["time_to_confirm_s_median"]
            key = "time_to_confirm_gated_minus_ungated_s" + ("" if len(buffers) == 1 else f"/buffer={buffer}")
            entry[key] = round(gated_t - ungated_t, 3) if gated_t is not None and ungated_t is not None else None
        report["by_cameras"][str(cameras)] = entry
    report["max_cameras_at_1pct_drop"] = best
    report["cpu_per_frame"] = {}
    for mode, values in cpu.items():
        per_frame = statistics.median(values)
        report["cpu_per_frame"][mode] = {
            "cpu_ms_per_frame_median": round(per_frame, 2),
            "runs": values,
            "cameras_at_10fps_estimate": round(os.cpu_count() * 1000 / (per_frame * FPS), 1),
        }
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
