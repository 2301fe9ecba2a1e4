"""Benchmark of the device pipeline (``mpd edge run``) on generated 640x480 videos of real faces.

    .venv/bin/python benchmarks/bench_pipeline.py [--repeats 3] [--out result.json]

Prints one JSON document:

- ``speed``: end-to-end fps with 1 and 4 faces (the default serial frame loop, and
  detection overlapped in a second thread for comparison), CPU use (cores), and the same
  frames' raw model time (YuNet detection + SFace embedding of every detected face, frames
  decoded beforehand) measured side by side in the same run; ratios
  pipeline time / raw model time and pipeline time / the model calls it made.
- ``latency``: a face's first frame -> its event in the outbox, with the file paced at
  15 fps (``--realtime``), median and p95; and the same in video frames from the
  ground-truth first visible frame.
- ``memory``: peak RSS of ``mpd edge run`` in a fresh process with a 25,000-person
  gallery (the real enrolled people plus random unit-vector filler), and its fps.
- ``confirmation``: every gated face embedded on every frame of member and stranger
  videos and fused into its track (the device searches the track's fused embedding),
  then the real vote/confirm logic replayed for a grid of thresholds and
  (confirm_frames, confirm_window): stranger confirmations, wrong-person
  confirmations, and members confirmed within 1 s (15 frames).

Needs the shared face photos (../shared/data/faces). The machine is shared: use the
medians and the side-by-side ratios, not single timings.
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

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from demo.scenes import Actor, SceneTruth, make_scene, walk  # noqa: E402
from edge_app.config import load_config  # noqa: E402
from edge_app.gallery.bundle import ModelRef, PersonRow, load_bundle, write_bundle  # noqa: E402
from edge_app.gallery.gallery import Gallery  # noqa: E402
from edge_app.gallery.live import LiveGallery  # noqa: E402
from edge_app.pipeline.runner import EdgeRunner  # noqa: E402
from edge_app.pipeline.tracking import Tracker, fuse_weight, iou, vote_from_matches  # noqa: E402
from edge_app.publishers.local import FilePublisher  # noqa: E402
from models.quality import assess  # noqa: E402
from models.recognizer import FaceModels  # noqa: E402
from models.thresholds import DEFAULT_THRESHOLD, threshold_for_gallery  # noqa: E402

FACES = Path(os.environ.get("MPD_SHARED_DATA", REPO.parent / "shared" / "data")) / "faces"
FPS = 15.0
# Named identities only: opaque labels from other sources may be the same people.
MEMBERS = [
    "alex_lacamoire", "barack_obama", "george_clooney", "jack_dorsey", "john_salley", "john_savage",
    "john_schneider", "john_shimkus", "john_simm", "johnny_galecki", "kaley_cuoco", "katy_perry",
    "kevin_sussman", "kit_harington", "kunal_nayyar", "matt_damon", "melissa_rauch", "simon_helberg",
]  # fmt: skip
STRANGERS = [
    "albert_einstein", "amy_adams", "angelina_jolie", "bradley_cooper", "eileen_collins", "kate_siegel",
    "lin_manuel_miranda", "mary_katherine_smart", "nathalie_baye", "paul_rudd", "shea_whigham", "steve_carell",
    "teresa_williams", "tom_cruise", "tom_hanks", "joe_biden", "rob_lowe", "rose_leslie",
]  # fmt: skip
# The device default for the members' gallery (calibrated for its size) is in the grid.
MEMBERS_THRESHOLD = threshold_for_gallery(len(MEMBERS))
THRESHOLDS = sorted({0.30, 0.33, 0.363, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.82, MEMBERS_THRESHOLD})
COUNTS = [(1, 1), (2, 3), (2, 5), (3, 4), (3, 5), (3, 7), (4, 6), (5, 8)]


def photos(identity: str) -> list[Path]:
    folder = FACES / "gallery" / identity
    return sorted(folder.iterdir(), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)


def build_bundles(models: FaceModels, work: Path) -> tuple[Path, Path]:
    """The enrolled members (all photos but the last, at most 3), and the same plus 25k filler."""
    from sync_service.gallery.enrol import build_gallery, score_spec

    people = {m: photos(m)[:-1][:3] for m in MEMBERS}
    vectors, labels, persons, _ = build_gallery(models, people, {}, progress=False)
    fields = {"detector": ModelRef(**models.detector_ref), "embedder": ModelRef(**models.embedder_ref)}
    small = write_bundle(
        work / "members", manifest_fields={"gallery_version": "bench-members", "score": score_spec(len(persons)), **fields},
        vectors=vectors, labels=labels, persons=persons,
    )  # fmt: skip
    filler_count = 25_000 - len(persons)
    rng = np.random.default_rng(0)
    filler = rng.standard_normal((filler_count, vectors.shape[1])).astype(np.float32)
    filler /= np.linalg.norm(filler, axis=1, keepdims=True)
    filler_ids = [f"filler-{i:05d}" for i in range(filler_count)]
    write_bundle(
        work / "members-25k",
        manifest_fields={"gallery_version": "bench-25k", "score": score_spec(25_000), **fields},
        vectors=np.concatenate([vectors, filler]),
        labels=labels + filler_ids,
        persons=persons + [PersonRow(person_id=p, display_name="filler", source="synthetic") for p in filler_ids],
    )
    assert small.counts["persons"] == len(MEMBERS)
    return work / "members", work / "members-25k"


def speed_videos(models: FaceModels, work: Path) -> dict[str, tuple[Path, SceneTruth]]:
    one = [
        walk(photos("barack_obama")[-1], "barack_obama", 0.0, 5.0, face_px=(90, 120)),
        walk(photos("albert_einstein")[0], "albert_einstein", 5.0, 5.0, direction=-1, face_px=(120, 90)),
    ]
    four = [
        Actor(photos("katy_perry")[-1], "katy_perry", 0.0, 10.0, (0.15, 0.28), (0.42, 0.3), (80, 95)),
        Actor(photos("amy_adams")[0], "amy_adams", 0.0, 10.0, (0.85, 0.3), (0.58, 0.28), (90, 80)),
        Actor(photos("matt_damon")[-1], "matt_damon", 0.0, 10.0, (0.15, 0.72), (0.42, 0.7), (85, 100)),
        Actor(photos("tom_hanks")[0], "tom_hanks", 0.0, 10.0, (0.85, 0.7), (0.58, 0.72), (95, 85)),
    ]
    videos = {}
    for name, actors in (("1_face", one), ("4_faces", four)):
        out = work / f"speed_{name}.avi"
        videos[name] = (out, make_scene(actors, out, seconds=10.0, models=models, seed=7))
    return videos


def sweep_videos(models: FaceModels, work: Path) -> list[tuple[Path, SceneTruth]]:
    """Six member videos and six stranger videos, three people each, staggered, with
    light changes, scale changes and blur."""
    videos = []
    for kind, people in (("members", MEMBERS), ("strangers", STRANGERS)):
        for v in range(len(people) // 3):
            actors = []
            for j, identity in enumerate(people[3 * v : 3 * v + 3]):
                photo = photos(identity)[-1] if kind == "members" else photos(identity)[0]
                actors.append(
                    walk(
                        photo, identity, enter_s=0.3 + 2.2 * j, seconds=3.5, direction=1 if j % 2 == 0 else -1,
                        height=(0.3, 0.62, 0.45)[j], face_px=((70, 110), (110, 75), (90, 90))[j],
                        light=((0.75, 1.15), (1.2, 0.8), (1.0, 1.0))[j], blur_px=(0, 0, 6)[j],
                    )
                )  # fmt: skip
            out = work / f"sweep_{kind}_{v}.avi"
            videos.append((out, make_scene(actors, out, seconds=9.0, models=models, seed=10 + v)))
    return videos


def read_frames(path: Path) -> list[np.ndarray]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def raw_model_time(models: FaceModels, frames: list[np.ndarray]) -> float:
    """Detection plus embedding of every detected face on every frame: the bare model calls."""
    started = time.perf_counter()
    for frame in frames:
        for face in models.detect(frame):
            models.embed(frame, face)
    return time.perf_counter() - started


def run_pipeline(
    models,
    bundle: Path,
    video: Path,
    work: Path,
    realtime: bool = False,
    threshold: float | None = None,
    overlap: bool = False,
) -> tuple[dict, EdgeRunner]:
    tag = f"{video.stem}-{time.monotonic_ns()}"
    config = load_config(
        component_config={
            "cameras": [{"id": "cam0", "source": str(video)}],
            "recognition": {"threshold": threshold},
            "outbox": {"path": str(work / f"outbox-{tag}.sqlite3")},
            "publisher": "file",
            "file_path": str(work / f"events-{tag}.jsonl"),
        }
    )
    live = LiveGallery(Gallery.from_bundle(load_bundle(bundle)), embedder=models.embedder_ref)
    runner = EdgeRunner(
        config, models, live, FilePublisher(config.file_path), realtime=realtime, status=None, overlap=overlap
    )
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    summary = runner.run()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    runner.close()
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    summary["cpu_cores"] = cpu / summary["elapsed_s"] if summary["elapsed_s"] else None
    return summary, runner


def bench_speed(models, bundle: Path, videos: dict, work: Path, repeats: int) -> dict:
    frames = {name: read_frames(path) for name, (path, _) in videos.items()}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"pipeline_s": [], "overlapped_s": [], "raw_model_s": [], "own_model_s": [], "cpu_cores": []}
        for name in videos
    }
    for _ in range(repeats):
        for name, (path, _) in videos.items():  # interleaved: both measured under the same load
            summary, _ = run_pipeline(models, bundle, path, work)
            samples[name]["pipeline_s"].append(summary["elapsed_s"])
            samples[name]["own_model_s"].append(summary["model_s"]["total"])
            samples[name]["cpu_cores"].append(summary["cpu_cores"])
            samples[name]["raw_model_s"].append(raw_model_time(models, frames[name]))
            overlapped, _ = run_pipeline(models, bundle, path, work, overlap=True)
            samples[name]["overlapped_s"].append(overlapped["elapsed_s"])
    result = {}
    for name, s in samples.items():
        n = len(frames[name])
        pipeline_s = statistics.median(s["pipeline_s"])
        raw_s = statistics.median(s["raw_model_s"])
        ratios = [p / r for p, r in zip(s["pipeline_s"], s["raw_model_s"], strict=True)]
        overhead = [p / m for p, m in zip(s["pipeline_s"], s["own_model_s"], strict=True)]
        result[name] = {
            "frames": n,
            "fps_median": round(n / pipeline_s, 1),
            "fps_all": [round(n / p, 1) for p in s["pipeline_s"]],
            "raw_model_fps_median": round(n / raw_s, 1),
            "overlapped_fps_median": round(n / statistics.median(s["overlapped_s"]), 1),
            "overlapped_over_default_time_median": round(
                statistics.median([q / p for p, q in zip(s["pipeline_s"], s["overlapped_s"], strict=True)]), 3
            ),
            "pipeline_over_raw_model_median": round(statistics.median(ratios), 3),
            "pipeline_over_its_own_model_calls_median": round(statistics.median(overhead), 3),
            "cpu_cores_median": round(statistics.median(s["cpu_cores"]), 2),
        }
    return result


def bench_latency(models, bundle: Path, videos: list, work: Path, threshold: float | None) -> dict:
    latencies, frames_after_visible = [], []
    missed = []
    for path, truth in videos:
        if "members" not in path.stem:
            continue
        summary, runner = run_pipeline(models, bundle, path, work, realtime=True, threshold=threshold)
        spans = truth.appearances()
        confirmed = {}
        for record in runner.processor.events:
            confirmed.setdefault(record.person_id, record)
        for identity, (first, _) in spans.items():
            record = confirmed.get(identity)
            if record is None:
                missed.append(identity)
                continue
            latencies.append(record.latency_s)
            frames_after_visible.append(record.confirm_frame - first)
    ordered = sorted(latencies)
    return {
        "threshold": threshold if threshold is not None else MEMBERS_THRESHOLD,
        "samples": len(latencies),
        "first_frame_to_outbox_s_median": round(statistics.median(latencies), 3) if latencies else None,
        "first_frame_to_outbox_s_p95": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 3)
        if ordered
        else None,
        "frames_after_first_visible_median": statistics.median(frames_after_visible) if frames_after_visible else None,
        "frames_after_first_visible_max": max(frames_after_visible, default=None),
        "members_not_confirmed": missed,
    }


def bench_memory(big_bundle: Path, video: Path, work: Path) -> dict:
    """Peak RSS of a fresh ``mpd edge run`` with the 25k gallery (measured by a wrapper so
    only that child counts)."""
    command = [
        sys.executable, "-m", "mpd_cli", "edge", "run", "--bundle", str(big_bundle), "--allow-unsigned", "--source", str(video),
        "--publisher", "file", "--outbox", str(work / "rss-outbox.sqlite3"),
    ]  # fmt: skip
    wrapper = (
        "import resource, subprocess, sys, json\n"
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': r.returncode, 'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
        " 'stdout': r.stdout[-4000:], 'stderr': r.stderr[-2000:]}))\n"
    )
    env = dict(os.environ, MPD_FILE_PATH=str(work / "rss-events.jsonl"))
    out = subprocess.run(
        [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, cwd=REPO, check=True, env=env
    )
    data = json.loads(out.stdout)
    if data["rc"] != 0:
        raise RuntimeError(f"mpd edge run failed: {data['stderr']}")
    summary = json.loads(data["stdout"].strip().splitlines()[-1])
    return {
        "gallery_persons": 25_000,
        "peak_rss_mb": round(data["maxrss_kb"] / 1024, 1),
        "fps": summary["fps"],
        "events": summary["persons"],
    }


def record_votes(models, bundle: Path, videos: list) -> list[dict]:
    """Every gated face on every frame embedded, fused into its track and the track's fused
    embedding searched (as the device does), grouped into tracks with the ground-truth
    identity (by box overlap)."""
    settings = load_config().recognition
    gallery = Gallery.from_bundle(load_bundle(bundle))
    tracks: dict[tuple[str, int], dict] = {}
    for path, truth in videos:
        tracker = Tracker(path.stem)
        for index, frame in enumerate(read_frames(path)):
            faces = models.detect(frame)
            assigned = tracker.associate([f.box for f in faces], index, index / FPS, index / FPS, settings)
            for face, track in zip(faces, assigned, strict=True):
                aligned = models.align(frame, face)
                assess(face, aligned)
                if face.rejected:
                    continue
                vector = models.embed_aligned(aligned)
                track.embedding = vector
                fused = track.fuse(vector, fuse_weight(face.quality))
                matches = gallery.search(fused[None, :], k=2)[0]
                truth_ids = [b[0] for b in truth.boxes.get(index, []) if iou(tuple(b[1:]), face.box) > 0.3]
                entry = tracks.setdefault((path.stem, track.track_id), {"frames": [], "truth": {}})
                entry["frames"].append((index, [(m.person_id, m.similarity) for m in matches]))
                for identity in truth_ids:
                    entry["truth"][identity] = entry["truth"].get(identity, 0) + 1
    records = []
    for (video, _), entry in tracks.items():
        if not entry["truth"]:
            continue  # a false detection with no ground-truth face
        identity = max(entry["truth"], key=entry["truth"].get)
        truth = next(t for p, t in videos if p.stem == video)
        records.append(
            {"video": video, "identity": identity, "first_visible": truth.appearances()[identity][0], **entry}
        )
    return records


def replay(records: list[dict], threshold: float, margin: float, confirm_frames: int, window: int) -> dict:
    from dataclasses import dataclass

    from edge_app.config import RecognitionConfig

    @dataclass(frozen=True)
    class Match:
        person_id: str
        similarity: float

    settings = RecognitionConfig(
        threshold=threshold, margin=margin, confirm_frames=confirm_frames, confirm_window=window, cooldown_s=0
    )
    stranger_events = wrong_person = 0
    confirmed_in: dict[tuple[str, str], int] = {}
    for record in records:
        tracker = Tracker("replay")
        (track,) = tracker.associate([(0, 0, 10, 10)], 0, 0.0, 0.0, settings)
        for index, matches in record["frames"]:
            vote = vote_from_matches([Match(*m) for m in matches], threshold, margin)
            confirmation = tracker.add_vote(track, np.zeros(1), vote, index / FPS, settings)
            if confirmation is None:
                continue
            if record["identity"] in STRANGERS:
                stranger_events += 1
            elif confirmation.person_id != record["identity"]:
                wrong_person += 1
            else:
                key = (record["video"], record["identity"])
                delay = index - record["first_visible"]
                confirmed_in[key] = min(delay, confirmed_in.get(key, delay))
            break
    members = {(r["video"], r["identity"]) for r in records if r["identity"] in MEMBERS}
    within = [k for k in members if confirmed_in.get(k, 10**9) <= FPS]
    delays = [confirmed_in[k] for k in members if k in confirmed_in]
    return {
        "threshold": threshold,
        "confirm_frames": confirm_frames,
        "confirm_window": window,
        "stranger_events": stranger_events,
        "wrong_person_events": wrong_person,
        "members": len(members),
        "members_within_1s": len(within),
        "frames_to_confirm_median": statistics.median(delays) if delays else None,
    }


def bench_confirmation(models, bundle: Path, videos: list) -> dict:
    records = record_votes(models, bundle, videos)
    margin = load_config().recognition.margin
    grid = [replay(records, t, margin, k, w) for t in THRESHOLDS for k, w in COUNTS]
    safe = [g for g in grid if g["stranger_events"] == 0 and g["wrong_person_events"] == 0]
    good = [g for g in safe if g["members_within_1s"] == g["members"]]
    stranger_best = {}
    for record in records:
        if record["identity"] in STRANGERS:
            best = max((m[0][1] for _, m in record["frames"] if m), default=0.0)
            stranger_best[record["identity"]] = max(best, stranger_best.get(record["identity"], 0.0))
    member_correct = [
        m[0][1] for r in records if r["identity"] in MEMBERS for _, m in r["frames"] if m and m[0][0] == r["identity"]
    ]
    return {
        "margin": margin,
        "tracks": len(records),
        "stranger_best_similarity_max": round(max(stranger_best.values(), default=0.0), 3),
        "stranger_best_similarity_by_identity": {k: round(v, 3) for k, v in sorted(stranger_best.items())},
        "member_frame_similarity_median": round(statistics.median(member_correct), 3) if member_correct else None,
        "grid": grid,
        "settings_with_no_false_event_and_all_members_within_1s": [
            (g["threshold"], g["confirm_frames"], g["confirm_window"]) for g in good
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--latency-threshold",
        type=float,
        help="threshold for the latency runs (default: the device default for the members' gallery size)",
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["speed", "latency", "memory", "confirmation"])
    args = parser.parse_args()
    if not (FACES / "gallery").is_dir():
        sys.exit(f"shared face photos not found at {FACES}")
    models = FaceModels.load()
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "default_threshold": DEFAULT_THRESHOLD,
        "members_gallery_threshold": MEMBERS_THRESHOLD,
        "defaults": load_config().recognition.model_dump(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        members_bundle, big_bundle = build_bundles(models, work)
        speed = speed_videos(models, work)
        if "speed" not in args.skip:
            result["speed"] = bench_speed(models, members_bundle, speed, work, args.repeats)
        if "memory" not in args.skip:
            result["memory"] = bench_memory(big_bundle, speed["4_faces"][0], work)
        if "latency" not in args.skip or "confirmation" not in args.skip:
            sweep = sweep_videos(models, work)
        if "latency" not in args.skip:
            result["latency"] = bench_latency(models, members_bundle, sweep, work, args.latency_threshold)
        if "confirmation" not in args.skip:
            result["confirmation"] = bench_confirmation(models, members_bundle, sweep)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
