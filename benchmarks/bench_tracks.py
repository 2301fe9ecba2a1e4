"""Track fusion on video: real people walking past a camera, galleries of 1,000 and 2,500 real people.

    python benchmarks/bench_tracks.py [--json tracks.json] [--write]

1. **Record** (cached outside git, like the photo embeddings): every person of
   ../shared/data/lfw-calibration walks through a 640x480, 15 fps clip made from their
   last photo (two people per clip, on two rows), with what a camera adds: face height
   40-110 px changing along the walk, light 0.6-1.3x, motion blur, defocus, sensor noise,
   a slow light wave and JPEG compression at quality 35-85 (demo/scenes.py). People of
   ../shared/data/faces walk too, as extra strangers. Each frame goes through the device's
   detector, tracker association and quality gate; every gated face is embedded.
2. **Calibrate the track threshold.** After each embedded frame the track's fused
   embedding votes; a track confirms a person when k of the last w votes name them
   (edge_app/pipeline/tracking.py). For every track and every other person's template,
   the highest score the rule would have let through is measured (~3 M pairs, one track
   per person); its tail p_track(t) gives the track threshold for N persons as for
   photos (benchmarks/calibrate.py). Fused 3 of 5 (the device's default), fused 1 of 5,
   unweighted fusion and per-frame votes are each calibrated and compared.
3. **Replay** the device's tracking and confirmation on the recorded frames against real
   galleries of 1,000 and 2,500 people (enrolled from their first photo as the builder
   does): how many gallery people walking through are confirmed, how fast after they
   first appear, and confirmations over stranger tracks. Fused (set-to-set, quality
   weighted) against per-frame votes at the photo threshold.
4. **25,000** persons: the confirmation rate estimated with the track tail model.

``--write`` stores the track tail in models/impostor_tail.json (``scores.track``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import calibrate  # noqa: E402
from benchmarks.face_cache import FACES, LFW_CALIBRATION, cache_dir, labelled_photos, load_faces  # noqa: E402
from demo.scenes import make_scene, walk  # noqa: E402
from edge_app.config import RecognitionConfig  # noqa: E402
from edge_app.pipeline.tracking import Tracker, fuse_weight, iou  # noqa: E402
from models.quality import assess  # noqa: E402
from models.scoring import SNorm, shipped_cohort  # noqa: E402

FPS = 15.0
WALK_S = 3.0
CLIP_S = 3.8
ENTER_S = (0.2, 0.5)
ROWS = (0.28, 0.66)
RECORD_VERSION = 2  # 2: every detected face embedded, the gate's measures kept (policies compared offline)
QUALITY_FIELDS = ("size_px", "score", "sharpness", "yaw", "pitch", "roll_deg")
GALLERY_SIZES = (1_000, 2_500)
# One-photo people who walk as strangers: 2,765 - 2,500 = 265 is every LFW person a
# 2,500-person gallery of these photos can leave out.
STRANGER_SINGLES = 265
# How the device decides (edge_app.config.RecognitionConfig confirm_frames of confirm_window on
# fused votes): the variant whose tail is shipped as the "track" table.
DEVICE_VARIANT = "fused, weighted, 3 of 5, gate without its blur check"
# ../shared/data/faces people who are in the calibration set under another name.
SAME_PERSON_ELSEWHERE = {"faces:joe_biden"}  # Joseph_Biden
CONFIRM_WITHIN_S = 2.0


# --- 1. recording ---------------------------------------------------------------------------


def walkers(seed: int = 0) -> list[tuple[str, Path, str]]:
    """(identity, walk photo, source): every calibration person with 2+ photos (they walk with
    their last photo and are enrolled from their first), STRANGER_SINGLES people with one
    photo (never enrolled in the replays), and every person of the faces set (strangers)."""
    people: dict[str, list[Path]] = {}
    for identity, photo in labelled_photos(LFW_CALIBRATION):
        people.setdefault(calibrate.LABEL_MERGES.get(identity, identity), []).append(photo)
    several = [identity for identity, photos in sorted(people.items()) if len(photos) >= 2]
    singles = [identity for identity, photos in sorted(people.items()) if len(photos) == 1]
    strangers = sorted(np.random.default_rng(seed).choice(singles, STRANGER_SINGLES, replace=False).tolist())
    result = [(identity, people[identity][-1], "lfw") for identity in several + strangers]
    if (FACES / "gallery").is_dir():
        extra: dict[str, list[Path]] = {}
        for identity, photo in labelled_photos(FACES / "gallery"):
            extra.setdefault(calibrate.FACES_LABEL_MERGES.get(identity, identity), []).append(photo)
        result += [(f"faces:{identity}", photos[-1], "faces") for identity, photos in sorted(extra.items())]
    order = np.random.default_rng(seed).permutation(len(result))
    return [result[i] for i in order]


def clip_actors(pair, rng: np.random.Generator):
    actors = []
    for slot, (identity, photo, _) in enumerate(pair):
        start, end = rng.uniform(40, 110, 2)
        light = tuple(rng.uniform(0.6, 1.3, 2))
        actors.append(
            walk(
                photo, identity, enter_s=ENTER_S[slot], seconds=WALK_S, direction=int(rng.choice([-1, 1])),
                height=ROWS[slot], face_px=(float(start), float(end)), light=light,
                blur_px=float(rng.choice([0, 0, 4, 8])), defocus_px=float(rng.choice([0, 0, 0.8, 1.5])),
            )
        )  # fmt: skip
    return actors


def record_clip(models, pair, clip: int, work: Path) -> list[dict]:
    """Render one clip, run detection, association and the gate on each frame, embed gated faces."""
    rng = np.random.default_rng(1000 + clip)
    video = work / f"clip{clip}.avi"
    truth = make_scene(
        clip_actors(pair, rng), video, seconds=CLIP_S, models=models, seed=clip,
        jpeg_quality=int(rng.integers(35, 86)),
    )  # fmt: skip
    spans = truth.appearances()
    settings = RecognitionConfig()
    tracker = Tracker(f"clip{clip}")
    tracks: dict[int, dict] = {}
    capture = cv2.VideoCapture(str(video))
    index = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        faces = models.detect(frame)
        assigned = tracker.associate([f.box for f in faces], index, index / FPS, index / FPS, settings)
        for face, track in zip(faces, assigned, strict=True):
            aligned = models.align(frame, face)
            assess(face, aligned)
            entry = tracks.setdefault(track.track_id, {"frames": [], "vectors": [], "quality": [], "truth": {}})
            for identity, *box in truth.boxes.get(index, []):
                if iou(tuple(box), face.box) > 0.3:
                    entry["truth"][identity] = entry["truth"].get(identity, 0) + 1
            # Every face is embedded here, also those the gate refuses: gate policies are compared offline.
            vector = models.embed_aligned(aligned)
            if not face.rejected:
                track.embedding = vector
            entry["frames"].append(index)
            entry["vectors"].append(vector)
            entry["quality"].append([float(face.quality[name]) for name in QUALITY_FIELDS])
        index += 1
    capture.release()
    video.unlink(missing_ok=True)
    records = []
    for entry in tracks.values():
        if not entry["truth"] or not entry["frames"]:
            continue  # a false detection
        identity = max(entry["truth"], key=entry["truth"].get)
        records.append(
            {
                "clip": clip,
                "identity": identity,
                "first_visible": spans[identity][0],
                "frames": np.asarray(entry["frames"], np.int32),
                "vectors": np.asarray(entry["vectors"], np.float32),
                "quality": np.asarray(entry["quality"], np.float32),
            }
        )
    return records


def recording_key(models, people: list[tuple[str, Path, str]]) -> str:
    """The recording cache's key: what was recorded (who walks, the bytes of their photo, in
    which order) and with which models; not where the photos or the checkout are, so the
    same recording is found from any clone (a miss costs ~25 minutes of recording)."""
    walks = [[identity, hashlib.sha256(photo.read_bytes()).hexdigest(), source] for identity, photo, source in people]
    content = json.dumps([RECORD_VERSION, models.detector_ref, models.embedder_ref, walks])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def record_all(models, limit: int | None = None) -> list[dict]:
    people = walkers()[: limit and 2 * limit]
    path = cache_dir() / f"tracks-{recording_key(models, people)}.npz"
    done = _read_tracks(path)
    clips = [people[i : i + 2] for i in range(0, len(people), 2)]
    todo = [c for c in range(len(clips)) if c not in {r["clip"] for r in done} | _empty_clips(path)]
    if todo:
        from tqdm import tqdm

        empty = _empty_clips(path)
        with tempfile.TemporaryDirectory(prefix="bench-tracks-") as tmp:
            for n, clip in enumerate(tqdm(todo, desc="walk clips", unit="clip", file=sys.stderr, disable=None)):
                records = record_clip(models, clips[clip], clip, Path(tmp))
                done.extend(records)
                if not records:
                    empty.add(clip)
                if n % 50 == 49 or n == len(todo) - 1:
                    _write_tracks(path, done, empty)
    return done


def _write_tracks(path: Path, records: list[dict], empty: set[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        clip=np.array([r["clip"] for r in records], np.int32),
        identity=np.array([r["identity"] for r in records]),
        first_visible=np.array([r["first_visible"] for r in records], np.int32),
        counts=np.array([len(r["frames"]) for r in records], np.int32),
        frames=np.concatenate([r["frames"] for r in records]) if records else np.zeros(0, np.int32),
        vectors=np.concatenate([r["vectors"] for r in records]) if records else np.zeros((0, 128), np.float32),
        quality=np.concatenate([r["quality"] for r in records]) if records else np.zeros((0, 6), np.float32),
        empty=np.array(sorted(empty), np.int32),
    )
    os.replace(tmp, path)


def _read_tracks(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as npz:
        data = {name: npz[name] for name in npz.files}  # an NpzFile re-reads an array on every access
    ends = np.cumsum(data["counts"])
    starts = ends - data["counts"]
    return [
        {
            "clip": int(data["clip"][i]),
            "identity": str(data["identity"][i]),
            "first_visible": int(data["first_visible"][i]),
            **{name: data[name][starts[i] : ends[i]] for name in ("frames", "vectors", "quality")},
        }
        for i in range(len(data["clip"]))
    ]


def _empty_clips(path: Path) -> set[int]:
    if not path.is_file():
        return set()
    with np.load(path, allow_pickle=False) as data:
        return set(data["empty"].tolist())


def mislabelled(records: list[dict], table) -> set[str]:
    """Walkers whose track is not who the label says: the clip cuts the photo's largest,
    most confident face (demo.scenes.cut_face), which in 6 of 1,028 LFW walk photos is not
    the subject enrolment picks (a spouse or a colleague beside them); and faces-set people
    who are in the calibration set under another name (found by their scores, confirmed by
    name)."""
    subjects = calibrate.subject_faces(table)
    index = {str(table.root / p): i for i, p in enumerate(table.paths)}
    wrong = set(SAME_PERSON_ELSEWHERE)
    for identity, photo, source in walkers():
        if source != "lfw":
            continue
        p = index[str(photo)]
        rows = list(table.faces_of(p))
        cut = rows[int(np.argmax([table.boxes[f][2] * table.boxes[f][3] * table.quality[f][1] for f in rows]))]
        if cut != subjects[p]:
            wrong.add(identity)
    return wrong & {r["identity"] for r in records}


# --- 2. the fused track and its threshold ---------------------------------------------------


def passes(quality: np.ndarray, policy) -> np.ndarray:
    """Which recorded frames a quality policy (models.quality.QualityPolicy) lets through, from
    the stored measures (the same checks as models.quality.assess)."""
    size, score, sharp, yaw, pitch, roll = (quality[:, k] for k in range(6))
    return (
        (size >= policy.min_face_px)
        & (score >= policy.min_score - 5e-4)
        & (sharp >= policy.min_sharpness)
        & (np.abs(yaw) <= policy.max_yaw)
        & (pitch >= policy.pitch_range[0])
        & (pitch <= policy.pitch_range[1])
        & (np.abs(roll) <= policy.max_roll_deg)
    )


def gated(records: list[dict], policy) -> list[dict]:
    """The records as the device would see them under ``policy``: only frames it embeds;
    tracks with none left are never searched."""
    out = []
    for record in records:
        keep = passes(record["quality"], policy)
        if keep.any():
            out.append({**record, **{k: record[k][keep] for k in ("frames", "vectors", "quality")}})
    return out


def fused_series(record: dict, weighted: bool = True) -> np.ndarray:
    """The track's fused embedding after each of its embedded frames (unit rows), as the device fuses."""
    weights = np.array(
        [fuse_weight(dict(zip(QUALITY_FIELDS, q, strict=True))) if weighted else 1.0 for q in record["quality"]]
    )
    sums = np.cumsum(record["vectors"] * weights[:, None], axis=0)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True)


def confirm_statistic(scores: np.ndarray, frames: int = 3, window: int = 5) -> np.ndarray:
    """Per column: the highest threshold at which ``frames`` of some ``window`` consecutive votes
    reach it (rows are consecutive embedded frames)."""
    steps = scores.shape[0]
    if steps < frames:
        return np.full(scores.shape[1], -np.inf)
    width = min(window, steps)
    windows = np.lib.stride_tricks.sliding_window_view(scores, width, axis=0)  # [steps-width+1, columns, width]
    return np.sort(windows, axis=2)[:, :, width - frames].max(0)


def with_photo_shape(own: np.ndarray, empirical: np.ndarray, pairs: int) -> tuple[np.ndarray, float]:
    """The track tail, extended with the photo tail's shape where tracks run out of data.

    Where both are dense (1e-5 <= p <= 1e-3, dozens to thousands of pairs), the track tail
    is the photo tail shifted by a near-constant offset (stranger tracks reach ~0.02 higher).
    The photo tail was measured on 2.5x more pairs of people, so its far end, shifted by
    the largest offset seen, bounds the track tail from below where only a handful of track
    pairs remain: p_track(t) = max(own measurement, p_photo(t - shift))."""
    from models.thresholds import impostor_tail

    grid, photo = (np.asarray(v) for v in impostor_tail("snorm"))
    dense = (empirical >= 1e-5) & (empirical <= 1e-3) & (empirical * pairs >= 30)
    log_photo = -np.log(np.maximum(photo, 1e-300))
    shifts = [
        t - np.interp(-np.log(e), log_photo, grid) for t, e in zip(calibrate.GRID[dense], empirical[dense], strict=True)
    ]
    shift = float(max(shifts)) if shifts else 0.0
    shifted = np.interp(calibrate.GRID - shift, grid, photo, left=float(photo[0]), right=float(photo[-1]))
    return np.minimum.accumulate(np.maximum(own, shifted)), round(shift, 4)


# --- 3. replaying the device on the recordings ----------------------------------------------


def replay(
    records,
    gallery_ids,
    templates,
    score,
    threshold: float,
    fused: bool,
    weighted: bool = True,
    margin: float = 0.03,
    rule: tuple[int, int] = (1, 5),
    walking_members: int | None = None,
    walking_strangers: int | None = None,
) -> dict:
    """Votes (fused or per frame) with the device's rule; confirmations of gallery people and strangers.

    ``walking_members``/``walking_strangers``: how many of each walked by, including those the
    gate never let through (never searched, so never confirmed)."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Match:
        person_id: str
        similarity: float

    from edge_app.pipeline.tracking import vote_from_matches

    settings = RecognitionConfig(
        threshold=threshold, margin=margin, cooldown_s=0, confirm_frames=rule[0], confirm_window=rule[1]
    )
    members = set(gallery_ids.tolist())
    confirmed_in, wrong, stranger_events, stranger_tracks, member_tracks = [], 0, 0, 0, 0
    stranger_matches: list[str] = []
    for record in records:
        vectors = fused_series(record, weighted) if fused else record["vectors"]
        scores = score(vectors, templates)
        top = np.argsort(-scores, axis=1)[:, :2]
        tracker = Tracker("replay")
        (track,) = tracker.associate([(0, 0, 10, 10)], 0, 0.0, 0.0, settings)
        is_member = record["identity"] in members
        member_tracks += is_member
        stranger_tracks += not is_member
        for frame, row, best in zip(record["frames"], scores, top, strict=True):
            matches = [Match(str(gallery_ids[j]), float(row[j])) for j in best]
            vote = vote_from_matches(matches, threshold, margin)
            confirmation = tracker.add_vote(track, np.zeros(1), vote, frame / FPS, settings)
            if confirmation is None:
                continue
            if not is_member:
                stranger_events += 1
                stranger_matches.append(
                    f"{record['identity']} -> {confirmation.person_id} ({confirmation.best_similarity:.3f})"
                )
            elif confirmation.person_id != record["identity"]:
                wrong += 1
            else:
                confirmed_in.append((frame - record["first_visible"]) / FPS)
            break
    within = [t for t in confirmed_in if t <= CONFIRM_WITHIN_S]
    walking_members = walking_members or member_tracks
    return {
        "threshold": threshold,
        "rule": f"{rule[0]} of {rule[1]}",
        "members_walking_by": walking_members,
        "member_tracks_searched": member_tracks,
        "confirmed": len(confirmed_in),
        "confirmed_within_2s": len(within),
        "confirmed_within_2s_rate": round(len(within) / max(walking_members, 1), 4),
        "seconds_to_confirm_median": round(float(np.median(confirmed_in)), 3) if confirmed_in else None,
        "seconds_to_confirm_p90": round(float(np.quantile(confirmed_in, 0.9)), 3) if confirmed_in else None,
        "wrong_person_events": wrong,
        "strangers_walking_by": walking_strangers or stranger_tracks,
        "stranger_tracks_searched": stranger_tracks,
        "stranger_events": stranger_events,
        "stranger_events_who": stranger_matches,
    }


def confirm_within(record: dict, scores: np.ndarray, seconds: float = CONFIRM_WITHIN_S, rule=(1, 5)) -> np.ndarray:
    """The confirm statistic using only the frames up to ``seconds`` after the face first appears."""
    keep = record["frames"] <= record["first_visible"] + seconds * FPS
    return confirm_statistic(scores[keep], *rule)


def weight_study(genuine: list[dict], own_templates: np.ndarray, score) -> dict:
    """Per-frame genuine score by face size and sharpness (what the fusion weights follow)."""
    scores, quality = [], []
    for record, template in zip(genuine, own_templates, strict=True):
        scores.append(score(record["vectors"], template[None, :])[:, 0])
        quality.append(record["quality"])
    scores, quality = np.concatenate(scores), np.concatenate(quality)
    table = {}
    for name, column, edges in (("size_px", 0, (0, 40, 56, 72, 96, 1e9)), ("sharpness", 2, (0, 40, 80, 120, 200, 1e9))):
        bins = {}
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            mask = (quality[:, column] >= lo) & (quality[:, column] < hi)
            if mask.sum() >= 20:
                bins[f"{lo:g}-{hi:g}"] = {
                    "frames": int(mask.sum()),
                    "median_genuine": round(float(np.median(scores[mask])), 3),
                }
        table[name] = bins
    return {"frames": int(len(scores)), "by": table}


def variants_to_compare() -> dict[str, dict]:
    from dataclasses import replace

    from models.quality import DEFAULT_POLICY

    no_blur = replace(DEFAULT_POLICY, min_sharpness=0.0)
    return {
        "fused, weighted, 1 of 5, gate without its blur check": {
            "policy": no_blur,
            "fused": True,
            "weighted": True,
            "rule": (1, 5),
        },  # noqa: E501
        "fused, weighted, 1 of 5, gate as for photos": {
            "policy": DEFAULT_POLICY,
            "fused": True,
            "weighted": True,
            "rule": (1, 5),
        },  # noqa: E501
        "fused, weighted, 3 of 5, gate without its blur check": {
            "policy": no_blur,
            "fused": True,
            "weighted": True,
            "rule": (3, 5),
        },  # noqa: E501
        "fused, unweighted, 1 of 5, gate without its blur check": {
            "policy": no_blur,
            "fused": True,
            "weighted": False,
            "rule": (1, 5),
        },  # noqa: E501
        "per frame, 3 of 5, gate as for photos": {
            "policy": DEFAULT_POLICY,
            "fused": False,
            "weighted": False,
            "rule": (3, 5),
        },  # noqa: E501
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", action="store_true", help="store the track tail in models/impostor_tail.json")
    parser.add_argument("--limit", type=int, help="only this many clips (a quick look)")
    parser.add_argument("--record-only", action="store_true", help="fill the recording cache and stop")
    args = parser.parse_args()
    from models.recognizer import FaceModels
    from models.thresholds import threshold_for_gallery

    models = FaceModels.load()
    started = time.perf_counter()
    recorded = record_all(models, args.limit)
    if args.record_only:
        print(json.dumps({"tracks": len(recorded), "seconds": round(time.perf_counter() - started, 1)}))
        return
    table = load_faces(LFW_CALIBRATION)
    dropped = mislabelled(recorded, table)
    recorded = [r for r in recorded if r["identity"] not in dropped]
    data = calibrate.calibration_set(table, calibrate.LABEL_MERGES, calibrate.TWINS)
    first = np.array([np.flatnonzero(data.identity == k)[0] for k in range(len(data.names))])
    templates, names = data.templates[first], data.names
    group_of = dict(zip(names, data.group[first], strict=True))
    template_groups = data.group[first]
    photo_counts = dict(zip(names, np.bincount(data.identity), strict=True))
    index_of = {name: i for i, name in enumerate(names)}
    cohort = shipped_cohort()
    norm = SNorm(cohort, templates)

    def score(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
        if rows is templates:
            return norm.scores(vectors @ rows.T, None, vectors)
        return SNorm(cohort, rows).scores(vectors @ rows.T, None, vectors)

    walking = [w for w in walkers()[: args.limit and 2 * args.limit] if w[0] not in dropped]
    members_walking = [w[0] for w in walking if photo_counts.get(w[0], 0) >= 2]
    strangers_walking = len(walking) - len(members_walking)
    result: dict = {
        "people_walking_by": len(walking),
        "of_them_gallery_candidates": len(members_walking),
        "left_out_as_mislabelled": sorted(dropped),
        "frames_with_a_face": int(sum(len(r["frames"]) for r in recorded)),
        "load_average": os.getloadavg(),
    }
    variants = variants_to_compare()
    for variant in variants.values():
        records = gated(recorded, variant["policy"])
        variant["records"] = records
        # 2. The tail: every searched track's confirm statistic against every other person's
        # template; people the gate never let through count as strangers who matched no one.
        pooled, pairs = [], 0
        for record in records:
            keep = template_groups != group_of.get(record["identity"], -1)
            vectors = fused_series(record, variant["weighted"]) if variant["fused"] else record["vectors"]
            stat = confirm_statistic(score(vectors, templates), *variant["rule"])[keep]
            pooled.append(stat[np.isfinite(stat)])
        pairs = len(walking) * (len(templates) - 1)
        pooled = np.sort(np.concatenate(pooled))
        empirical = (len(pooled) - np.searchsorted(pooled, calibrate.GRID - 1e-9)) / pairs
        own, variant["extrapolation"] = calibrate.conservative_tail(empirical, empirical * pairs, pairs)
        variant["p"], variant["shift_from_photos"] = with_photo_shape(own, empirical, pairs)
        variant["empirical"], variant["pairs"] = empirical, pairs
        variant["frames_searched"] = int(sum(len(r["frames"]) for r in records))
        variant["tracks_searched"] = len(records)
    device = variants[DEVICE_VARIANT]
    p_track = device["p"]
    result["weights"] = weight_study(
        [r for r in device["records"] if r["identity"] in members_walking],
        templates[[index_of[r["identity"]] for r in device["records"] if r["identity"] in members_walking]],
        score,
    )
    result["track_tail"] = {
        "variant": DEVICE_VARIANT,
        "pairs": device["pairs"],
        "extrapolation": device["extrapolation"],
        "shift_from_photo_tail": device["shift_from_photos"],
        "table": [
            {"t": float(t), "p_measured": float(f"{e:.4g}"), "p_shipped": float(f"{q:.4g}")}
            for k, (t, e, q) in enumerate(zip(calibrate.GRID, device["empirical"], p_track, strict=True))
            if k % 8 == 0 and t >= 0.35
        ],
        "by_variant": {
            name: {
                "tracks_searched": v["tracks_searched"],
                "frames_searched": v["frames_searched"],
                "thresholds": {n: calibrate.threshold_for(v["p"], n) for n in (18, 85, 500, 1_000, 2_500, 25_000)},
            }
            for name, v in variants.items()
        },
    }

    # 3. Replays at 1,000 and 2,500 people, each variant at its own calibrated threshold; the
    # device before fusion (per-frame votes at the photo threshold) beside them.
    rng = np.random.default_rng(7)
    recorded_ids = {w[0] for w in walking}
    singles = [name for name in names if name not in recorded_ids]  # fillers: people who do not walk by
    replays = {}
    for persons in GALLERY_SIZES:
        fillers = list(rng.choice(singles, persons - len(members_walking), replace=False))
        members = np.array(sorted(members_walking + fillers))
        rows = templates[[index_of[m] for m in members]]
        counts = {"walking_members": len(members_walking), "walking_strangers": strangers_walking}
        replays[persons] = {
            name: replay(
                v["records"],
                members,
                rows,
                score,
                calibrate.threshold_for(v["p"], persons),
                v["fused"],
                v["weighted"],
                rule=v["rule"],
                **counts,
            )  # fmt: skip
            for name, v in variants.items()
        }
        old = variants["per frame, 3 of 5, gate as for photos"]
        replays[persons]["per frame, 3 of 5, gate as for photos, at the photo threshold (before fusion)"] = replay(
            old["records"], members, rows, score, threshold_for_gallery(persons), False, False, rule=(3, 5), **counts
        )
    result["replay"] = replays

    # 4. Larger galleries, estimated with the tail model: a gallery person is confirmed within
    # 2 s if their own statistic reaches the threshold and no distractor among N - 1 does.
    grid_log_p = np.log(np.maximum(p_track, 1e-300))
    searched = {r["identity"]: r for r in device["records"]}
    estimates = {}
    for persons in (1_000, 2_500, 25_000):
        t = calibrate.threshold_for(p_track, persons)
        rates = []
        for identity in members_walking:
            record = searched.get(identity)
            if record is None:
                rates.append(0.0)
                continue
            own = index_of[identity]
            scores = score(fused_series(record), templates[own : own + 1])
            stat = confirm_within(record, scores, rule=device["rule"])[0]
            p_own = float(np.exp(np.interp(stat, calibrate.GRID, grid_log_p))) if np.isfinite(stat) else 1.0
            rates.append(float(stat >= t) * (1 - p_own) ** (persons - 1))
        estimates[persons] = {"threshold": t, "confirmed_within_2s_estimated": round(float(np.mean(rates)), 4)}
    result["tail_model_estimates"] = estimates
    # The ceiling without any camera: each walker's walk photo itself against their template.
    subjects = calibrate.subject_faces(table)
    photo_index = {str(table.root / p): i for i, p in enumerate(table.paths)}
    walk_photo = {identity: photo for identity, photo, _ in walking}
    photo_scores = []
    for identity in members_walking:
        face = subjects[photo_index[str(walk_photo[identity])]]
        vector = table.vectors[face][None, :]
        photo_scores.append(float(score(vector, templates[index_of[identity]][None, :])[0, 0]))
    result["walk_photos_without_a_camera"] = {
        str(persons): {
            "track_threshold": estimates[persons]["threshold"],
            "photos_reaching_it": round(float(np.mean(np.array(photo_scores) >= estimates[persons]["threshold"])), 4),
        }
        for persons in estimates
    }
    result["fusion_cost_us"] = fusion_cost()
    result["seconds"] = round(time.perf_counter() - started, 1)
    if args.write:
        path = REPO / "models" / "impostor_tail.json"
        table_json = json.loads(path.read_text())
        table_json["scores"]["track"] = {
            "cohort": cohort.id,
            "rule": f"a track's fused quality-weighted embedding; {DEVICE_VARIANT}",
            "data": f"{len(walking)} people walking past a camera (benchmarks/bench_tracks.py)",
            "p": [float(f"{v:.4g}") for v in p_track],
        }
        path.write_text(json.dumps(table_json, indent=1) + "\n")
    text = json.dumps(result, indent=1, default=calibrate._json_default)
    if args.json:
        args.json.write_text(text)
    print(text)


def fusion_cost(repeats: int = 20_000) -> dict:
    """Microseconds per frame to fuse one embedding into its track (weight and update)."""
    from edge_app.pipeline.tracking import Track

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((64, 128)).astype(np.float32)
    quality = {"size_px": 70.0, "sharpness": 90.0, "yaw": 0.1}
    track = Track(1, (0, 0, 1, 1), 0, 0.0, 0.0, 0, 0.0, 0.0)
    started = time.perf_counter()
    for i in range(repeats):
        track.fuse(vectors[i % 64], fuse_weight(quality))
    per_frame = (time.perf_counter() - started) / repeats * 1e6
    return {"per_frame_us": round(per_frame, 2), "per_2s_track_at_15fps_us": round(per_frame * 30, 1)}


if __name__ == "__main__":
    main()
