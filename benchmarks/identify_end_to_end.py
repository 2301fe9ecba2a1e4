"""The shipped commands on a gallery of thousands: ``mpd gallery build --photos`` then ``mpd identify``.

    python benchmarks/identify_end_to_end.py [--data DIR] [--single-enrolled 1500] [--json e2e.json]

The calibration and scale studies score cached embeddings; this runs the real CLI, as an
operator (or an evaluator) would, on a labelled folder ``<person>/<photo>`` (default
``../shared/data/lfw-calibration``, read in place: the gallery folder holds symlinks):

- every person with two or more photos is enrolled from their first photo and probed with
  the others;
- ``--single-enrolled`` of the one-photo people (a fixed random choice) are enrolled too,
  so the gallery is thousands strong; the remaining one-photo people are strangers.

Folders known to hold one person under two names (benchmarks/calibrate.py's label merges)
count as one person. ``--data ../shared/data/faces/gallery --single-enrolled 0`` runs the
same on the stock, family and press photo set (41 persons, 35 strangers).

A photo can hold several faces (press photos: a colleague, a spouse, a team-mate who may
be in the gallery too). ``mpd identify`` answers every face, subject first. Three readings:

- ``subject``: the first face's answer (the photo's subject, enrolment's rule);
- ``any_face``: identified if any face is the right person; a false alarm if any face of a
  stranger photo matches someone (counts co-pictured gallery people as false alarms);
- ``detector_order``: the face the detector scored highest (what a caller got before
  answers were ordered subject first).

Identical twins (benchmarks/calibrate.py ``TWINS``) are reported apart: no face recogniser
separates them. About 3.5 minutes on two cores for ~2,300 persons and ~3,200 photos.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.calibrate import FACES_LABEL_MERGES, LABEL_MERGES, TWINS  # noqa: E402
from benchmarks.face_cache import IMAGE_SUFFIXES, LFW_CALIBRATION  # noqa: E402
from edge_app.gallery.bundle import read_manifest  # noqa: E402

MPD = Path(sys.executable).with_name("mpd")
BATCH = 400  # photos per `mpd identify` call: bounds the command line
MERGES = {**LABEL_MERGES, **FACES_LABEL_MERGES}


def plan(root: Path, single_enrolled: int, seed: int) -> dict:
    photos: dict[str, list[Path]] = {}
    for person in sorted(root.iterdir()):
        if person.is_dir():  # folders known to be one person (LABEL_MERGES) are one person here too
            photos.setdefault(MERGES.get(person.name, person.name), []).extend(
                sorted(p for p in person.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            )
    multi = [name for name, files in photos.items() if len(files) >= 2]
    single = [name for name, files in photos.items() if len(files) == 1]
    random.Random(seed).shuffle(single)
    enrolled = multi + single[:single_enrolled]
    return {
        "gallery": {name: photos[name][0] for name in enrolled},
        "probes": [(name, path) for name in multi for path in photos[name][1:]],
        "strangers": [(name, photos[name][0]) for name in single[single_enrolled:]],
    }


def identify(bundle: Path, paths: list[Path]) -> dict[str, dict]:
    answers = {}
    for start in range(0, len(paths), BATCH):
        batch = [str(path) for path in paths[start : start + BATCH]]
        done = subprocess.run([MPD, "identify", "--bundle", bundle, *batch], capture_output=True, text=True)
        for line in done.stdout.splitlines():
            answer = json.loads(line)
            answers[answer["image"]] = answer
    return answers


def readings(faces: list[dict]) -> dict[str, list[dict]]:
    """The faces each reading looks at."""
    first = faces[:1]
    by_detector = sorted(faces, key=lambda face: -face["score"])[:1]
    return {"subject": first, "any_face": faces, "detector_order": by_detector}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=LFW_CALIBRATION)
    parser.add_argument("--single-enrolled", type=int, default=1500, help="one-photo people enrolled as well")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"labelled photos not found at {args.data}")
    started = time.perf_counter()
    chosen = plan(args.data, args.single_enrolled, args.seed)
    twin_of = {a: b for pair in TWINS for a, b in (pair, pair[::-1])}
    with tempfile.TemporaryDirectory() as work:
        folder, bundle = Path(work) / "photos", Path(work) / "bundle"
        for name, photo in chosen["gallery"].items():
            (folder / name).mkdir(parents=True)
            (folder / name / photo.name).symlink_to(photo.resolve())
        build = subprocess.run(
            [MPD, "gallery", "build", "--photos", folder, "--out", bundle], capture_output=True, text=True
        )
        if build.returncode:
            sys.exit(f"mpd gallery build failed:\n{build.stderr[-2000:]}")
        build_seconds = round(time.perf_counter() - started, 1)
        threshold = read_manifest(bundle).score.threshold
        probes = identify(bundle, [path for _, path in chosen["probes"]])
        strangers = identify(bundle, [path for _, path in chosen["strangers"]])
    report: dict = {
        "data": f"{args.data.name}: {len(chosen['gallery'])} persons enrolled, {len(chosen['probes'])} probe photos, "
        f"{len(chosen['strangers'])} stranger photos",
        "threshold": threshold,
        "build_seconds": build_seconds,
        "errors": sorted(
            str(path)
            for _, path in chosen["probes"] + chosen["strangers"]
            if "error" in {**probes, **strangers}.get(str(path), {"error": "no answer"})
        ),
        "stranger_photos_with_several_faces": sum(len(a.get("faces", [])) > 1 for a in strangers.values()),
    }
    for reading in ("subject", "any_face", "detector_order"):
        identified = wrong = 0
        for name, path in chosen["probes"]:
            matched = [f["person_id"] for f in readings(probes.get(str(path), {}).get("faces", []))[reading]]
            matched = [m for m in matched if m]
            identified += name in matched
            wrong += bool(matched) and name not in matched
        false_alarms, twins = [], []
        for name, path in chosen["strangers"]:
            for face in readings(strangers.get(str(path), {}).get("faces", []))[reading]:
                if face["person_id"]:
                    hit = {"stranger": name, "matched": face["person_id"], "similarity": face["similarity"]}
                    (twins if twin_of.get(name) == face["person_id"] else false_alarms).append(hit)
        report[reading] = {
            "identified": round(identified / len(chosen["probes"]), 4),
            "probes_matched_to_someone_else": wrong,
            "false_alarms": len(false_alarms),
            "false_alarms_per_stranger": round(len(false_alarms) / len(chosen["strangers"]), 5),
            "identical_twin_matches": len(twins),
            "false_alarm_pairs": false_alarms,
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
