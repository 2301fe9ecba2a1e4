"""``mpd demo``: the whole chain on one machine with embedded defaults, no AWS account.

made-up cases -> local NamUs server -> ingest -> signed gallery build and publish ->
device sync -> ``mpd edge run`` over a generated video -> outbox -> in-process alert
handler -> SMS text. Every step runs the real ``mpd`` command in a subprocess, as an
operator would, so the demo proves the commands, not a shortcut around them.

The made-up missing person is scikit-image's astronaut portrait; strangers are the
cameraman and faces from scikit-image's LFW sample (demo/assets.py). With
``--photos DIR --video FILE`` the user's own data replaces them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

DEVICE_ID = "demo-device"
CAMERA_ID = "cam0"
# The demo has no reviewer at the keyboard, so its site texts responders at once
# ("review: after"); a real site reviews first (docs/review.md).
SITES = {
    "sites": {"demo": {"name": "Demo field site", "review": "after"}},
    "devices": {DEVICE_ID: {"name": "Demo field site", "site": "demo", "cameras": {CAMERA_ID: "north gate camera"}}},
}
DEMO_STATE = "Illinois"


@dataclass
class Report:
    steps: list[tuple[str, float]] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def step(self, number: int, total: int, title: str):
        return _Step(self, f"[{number}/{total}] {title}")


class _Step:
    def __init__(self, report: Report, title: str) -> None:
        self.report, self.title = report, title

    def __enter__(self) -> _Step:
        click.echo(f"{self.title} ...", err=True)
        self.t0 = time.monotonic()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        seconds = time.monotonic() - self.t0
        self.report.steps.append((self.title, seconds))
        status = "done" if exc is None else f"FAILED ({exc})"
        click.echo(f"    {status} in {seconds:.1f} s", err=True)


def mpd(*args: str, env: dict[str, str] | None = None, capture: bool = False) -> subprocess.CompletedProcess:
    """Run one ``mpd`` command as a subprocess; raise with its stderr on failure."""
    import os

    command = [sys.executable, "-m", "mpd_cli", *args]
    result = subprocess.run(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if result.returncode != 0:
        raise click.ClickException(f"`mpd {' '.join(args)}` failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def write_demo_photos(work: Path, photos_dir: Path | None) -> tuple[list[tuple[str, list[Path]]], list[Path]]:
    """(gallery persons with their photo files, stranger photo files) for the source fixtures and the video."""
    import cv2

    from demo import assets

    faces_dir = work / "photos"
    faces_dir.mkdir(parents=True, exist_ok=True)
    if photos_dir is not None:
        persons = [
            (person.name, sorted(p for p in person.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"}))
            for person in sorted(photos_dir.iterdir())
            if person.is_dir()
        ]
        return [(name, files) for name, files in persons if files], []
    missing = assets.missing_person()
    first = faces_dir / "missing-1.jpg"
    cv2.imwrite(str(first), missing.image)
    # A second, differently lit and framed photo of the same person, as case files often have.
    second = faces_dir / "missing-2.jpg"
    variant = cv2.convertScaleAbs(missing.image[20:460, 60:480], alpha=0.85, beta=12)
    cv2.imwrite(str(second), variant)
    strangers = []
    for stranger in assets.strangers(count=5):
        path = faces_dir / f"{stranger.name}.png"
        cv2.imwrite(str(path), stranger.image)
        strangers.append(path)
    return [("astronaut", [first, second])], strangers


def write_cases(data_dir: Path, persons: list[tuple[str, list[Path]]]) -> list[dict]:
    from sync_service.dev_servers.fixtures import FixtureCase, FixturePhoto, write_fixture_cases

    cases, table = [], []
    for index, (name, photos) in enumerate(persons):
        case_id = 90_001 + index
        first, last = ("Alex", "Demo") if index == 0 else (name.replace("_", " ").title(), "Demo")
        cases.append(
            FixtureCase(
                case_id=case_id,
                first_name=first,
                last_name=last,
                sex="Female",
                age_now=48,
                age_when_missing=46,
                last_seen_date="2025-06-14",
                city="Springfield",
                state=DEMO_STATE,
                photos=[
                    FixturePhoto(p, mime_type="image/x-png" if p.suffix == ".png" else "image/jpg") for p in photos
                ],
            )
        )
        table.append({"case_id": f"MP{case_id}", "name": f"{first} {last}", "photos": len(photos)})
    write_fixture_cases(data_dir, "namus", cases, states=[DEMO_STATE])
    return table


def make_video(path: Path, persons: list[tuple[str, list[Path]]], strangers: list[Path]):
    from demo.scenes import make_scene, walk

    name, photos = persons[0]
    actors = [walk(photos[0], name, enter_s=2.0, seconds=4.0, face_px=(80, 130), light=(0.8, 1.1), blur_px=4)]
    for index, stranger in enumerate(strangers):
        actors.append(
            walk(stranger, f"stranger-{index + 1}", enter_s=0.3 + 1.3 * index, seconds=3.0,
                 direction=-1 if index % 2 else 1, height=0.3 + 0.12 * (index % 3), face_px=(70, 110))
        )  # fmt: skip
    return make_scene(actors, path, seconds=8.5)


def contact_sheet(video: Path, gallery_dir: Path, public_key: Path, out: Path, threshold: float | None = None) -> int:
    """Boxes, names and similarities on frames sampled from the demo's own video; by default
    at the threshold the device applies to this gallery (calibrated for its size)."""
    import cv2
    import numpy as np

    from edge_app.gallery.gallery import Gallery
    from edge_app.gallery.install import GalleryDir, load_public_key
    from models.recognizer import FaceModels

    models = FaceModels.load()
    gallery = Gallery.from_bundle(GalleryDir(gallery_dir, load_public_key(public_key)).load())
    if threshold is None:
        threshold = gallery.threshold
    capture = cv2.VideoCapture(str(video))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    tiles = []
    for index in np.linspace(0, total - 1, 12).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if not ok:
            continue
        for face in models.gate(models.detect(frame), frame):
            x, y, w, h = (int(v) for v in face.box)
            if face.rejected:
                colour, label = (128, 128, 128), f"rejected: {face.rejected}"
            else:
                match = gallery.search(models.embed(frame, face), k=1)[0]
                best = match[0] if match else None
                if best and best.similarity >= threshold:
                    colour, label = (0, 200, 0), f"{gallery.person(best.person_id).display_name} {best.similarity:.2f}"
                else:
                    colour, label = (0, 165, 255), f"unknown {best.similarity:.2f}" if best else "unknown"
            cv2.rectangle(frame, (x, y), (x + w, y + h), colour, 2)
            cv2.putText(frame, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
        cv2.putText(frame, f"frame {index}", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(cv2.resize(frame, (480, 360), interpolation=cv2.INTER_AREA))
    capture.release()
    while len(tiles) % 3:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + 3]) for i in range(0, len(tiles), 3)]
    cv2.imwrite(str(out), np.vstack(rows))
    return len(tiles)


def deliver_events(
    events_file: Path, cloud_dir: Path, source_url: str | None, gallery: Path | None = None, store: Path | None = None
) -> list[dict]:
    """Hand each published match to the alert handler in-process (the embedded cloud)."""
    import os

    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the report prints the decisions
    if source_url:
        os.environ.setdefault("MPD_SOURCES_ALLOW_LOOPBACK", "1")  # the fresh-details lookup asks the local stand-in
    from sync_service.alerts.config import AlertSettings, Sites
    from sync_service.alerts.handler import LocalContext, build_service
    from sync_service.alerts.rule import LocalRule

    settings = AlertSettings(
        backend="local",
        local_dir=cloud_dir,
        phone_numbers=("+15555550100",),
        source_urls={"namus": source_url} if source_url else {},
        sites=Sites.model_validate(SITES),
        gallery_url=str(gallery) if gallery else None,
        store_url=str(store) if store else None,
    )
    service = build_service(settings)
    rule = LocalRule.parse()  # the IoT rule's topic filter and SELECT, as in template.yaml
    decisions = []
    if events_file.exists():
        for line in events_file.read_text().splitlines():
            record = json.loads(line)
            event = rule.event_for(record["topic"], json.dumps(record["message"]).encode())
            if event is not None:
                decisions.append(service.handle(event, LocalContext()))
    return decisions


@click.command("demo")
@click.option(
    "--photos",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Your own gallery: <person>/<photo> folders (made-up cases are written around them).",
)
@click.option(
    "--video",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Your own video to run the device on (default: a generated scene).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".mpd/demo"),
    show_default=True,
    help="Where everything the demo makes goes (wiped first).",
)
@click.option("--keep", is_flag=True, help="Do not wipe the work folder first.")
def demo_command(photos: Path | None, video: Path | None, workdir: Path, keep: bool) -> None:
    """Run the whole chain on one machine and print the SMS a responder would get."""  # fmt: skip
    from sync_service.dev_servers.server import SourceServer

    if workdir.exists() and not keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    work = workdir.resolve()
    report = Report()
    total = 9
    with report.step(1, total, "Writing made-up cases (photos from package sample images)"):
        persons, strangers = write_demo_photos(work, photos)
        if not persons:
            raise click.ClickException(f"{photos}: no <person>/<photo> folders with .jpg or .png photos")
        cases = write_cases(work / "source-data", persons)
        report.facts["cases"] = cases
    server = SourceServer("namus", work / "source-data").start()
    try:
        with report.step(2, total, f"Ingesting from the local NamUs server at {server.url}"):
            result = mpd("ingest", "namus", "--base-url", server.url, "--store", str(work / "store"),
                         "--states", DEMO_STATE, "--rate-limit", "50", "--allow-loopback", "--json",
                         capture=True)  # fmt: skip
            report.facts["ingest"] = json.loads(result.stdout)
        with report.step(3, total, "Generating the gallery signing keys"):
            mpd(
                "keys",
                "generate",
                "--private",
                str(work / "keys/gallery.key"),
                "--public",
                str(work / "keys/gallery.pub"),
            )
        signing = {"MPD_GALLERY_SIGNING_KEY_FILE": str(work / "keys/gallery.key")}
        with report.step(4, total, "Building and signing the gallery, publishing it (pointer last)"):
            mpd("gallery", "build", "--store", str(work / "store"), "--out", str(work / "build"), env=signing)
            mpd("gallery", "publish", "--build", str(work / "build"), "--to", str(work / "published"), env=signing)
        with report.step(5, total, "Device: syncing, verifying and installing the gallery"):
            mpd("sync", "--from", str(work / "published"), "--dir", str(work / "device/gallery"),
                "--public-key", str(work / "keys/gallery.pub"), "--once")  # fmt: skip
        with report.step(6, total, "Generating the camera's view (the missing person and strangers walk by)"):
            if video is None:
                video = work / "camera.avi"
                truth = make_video(video, persons, strangers)
                report.facts["scene"] = {"frames": truth.frames, "fps": truth.fps, "appearances": truth.appearances()}
        config = work / "device/config.json"
        config.write_text(json.dumps({
            "device_id": DEVICE_ID,
            "publisher": "file",
            "file_path": str(work / "device/published-events.jsonl"),
            "outbox": {"path": str(work / "device/outbox.sqlite3")},
        }))  # fmt: skip
        with report.step(7, total, "Device: mpd edge run over the video (detect, track, confirm, outbox, publish)"):
            result = mpd("edge", "run", "--bundle", str(work / "device/gallery"), "--source", str(video),
                         "--camera-id", CAMERA_ID, "--config", str(config),
                         "--public-key", str(work / "keys/gallery.pub"), capture=True)  # fmt: skip
            summary = json.loads(result.stdout.strip().splitlines()[-1])
            report.facts["edge"] = summary
        with report.step(8, total, "Cloud: alert handler in-process (dedupe, cooldown, fresh case details, SMS)"):
            decisions = deliver_events(
                work / "device/published-events.jsonl", work / "cloud", server.url, work / "published", work / "store"
            )
            report.facts["decisions"] = decisions
    finally:
        server.stop()
    with report.step(9, total, "Drawing a contact sheet of what the camera saw"):
        sheet = work / "contact-sheet.png"
        contact_sheet(video, work / "device/gallery", work / "keys/gallery.pub", sheet)
    print_report(report, work)


def print_report(report: Report, work: Path) -> None:
    sms_file = work / "cloud" / "sms.jsonl"
    messages = [json.loads(line) for line in sms_file.read_text().splitlines()] if sms_file.exists() else []
    edge = report.facts.get("edge", {})
    click.echo("")
    click.echo("SMS sent to responders:" if messages else "No SMS was sent.")
    for message in messages:
        click.echo("-" * 60)
        click.echo(message.get("message", message))
    click.echo("-" * 60)
    click.echo("")
    click.echo("Report")
    for title, seconds in report.steps:
        click.echo(f"  {seconds:6.1f} s  {title}")
    click.echo(f"  {time.monotonic() - report.started:6.1f} s  in all")
    ingest = report.facts.get("ingest", {})
    click.echo(f"  ingest: {json.dumps(ingest, sort_keys=True)[:300]}")
    keys = ("frames_read", "frames_processed", "frames_dropped", "fps", "faces", "tracks", "events")
    click.echo(f"  device: {json.dumps({k: edge.get(k) for k in keys if k in edge})}")
    decisions = [d.get("decision") for d in report.facts.get("decisions", [])]
    click.echo(f"  alert decisions: {decisions}")
    click.echo(f"  contact sheet: {work / 'contact-sheet.png'}")
    click.echo(f"  everything else: {work}")
