"""The device pipeline on generated videos of real faces (in process, real models)."""

from __future__ import annotations

import base64
import json
import threading

import numpy as np
import pytest

from edge_app.config import ConfigError, RecognitionConfig, load_config
from edge_app.gallery.bundle import ModelRef, PersonRow, load_bundle
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.live import LiveGallery
from edge_app.match_event import MAX_CROP_BYTES, MatchEvent
from edge_app.pipeline.frame_loop import FrameProcessor
from edge_app.pipeline.runner import EdgeRunner
from edge_app.publishers.local import FilePublisher
from models.thresholds import DEFAULT_THRESHOLD, threshold_for_gallery
from sync_service.gallery.enrol import score_spec
from tests.test_edge_fixtures import MEMBERS, TEST_THRESHOLD, build_bundle, cached_scene, face_models

FPS = 15


@pytest.fixture(scope="module")
def strangers_video(tmp_path_factory, faces_dir):
    return cached_scene(tmp_path_factory, faces_dir, "strangers")


def run_pipeline(tmp_path, bundle, video, recognition=None, gallery=None, during=None, overlap=False, motion=None):
    config = load_config(
        component_config={
            "device_id": "test-thing",
            "cameras": [{"id": "door", "source": str(video)}],
            "recognition": {"threshold": TEST_THRESHOLD, **(recognition or {})},
            "motion": motion or {},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
            "publisher": "file",
            "file_path": str(tmp_path / "events.jsonl"),
        }
    )
    models = face_models()
    live = gallery or LiveGallery(Gallery.from_bundle(load_bundle(bundle)), embedder=models.embedder_ref)
    runner = EdgeRunner(config, models, live, FilePublisher(config.file_path), status=None, overlap=overlap)
    if during is not None:
        threading.Thread(target=during, args=(runner,), daemon=True).start()
    summary = runner.run()
    assert runner.drain_outbox(10)
    runner.close()
    sink = tmp_path / "events.jsonl"
    events = [json.loads(line)["message"] for line in sink.read_text().splitlines()] if sink.exists() else []
    matches = [MatchEvent.model_validate(e) for e in events if e.get("schema") == "mpd.match/1"]
    return summary, matches, runner


def test_a_gallery_person_walking_through_gives_one_event_per_cooldown(tmp_path, bundle, member_video):
    video, truth = member_video
    summary, events, runner = run_pipeline(tmp_path, bundle, video)
    assert summary["frames_processed"] == truth.frames and summary["frames_dropped"] == 0
    assert [e.person_id for e in events] == ["barack_obama"], "two visits inside one cooldown: one event"
    assert summary["suppressed_by_cooldown"] >= 1, "the second visit was confirmed but held back by the cooldown"
    event = events[0]
    assert event.device_id == "test-thing" and event.camera_id == "door"
    assert event.best_similarity >= event.threshold and event.frames_used >= 3
    assert event.threshold == TEST_THRESHOLD, "a configured threshold is the one applied"
    assert event.gallery_version == "test-1" and event.first_seen <= event.last_seen
    # Confirmed within one second of the face's first frame (ground truth) at 15 fps.
    first_visible = truth.appearances()["barack_obama"][0]
    confirm_frame = runner.processor.events[0].confirm_frame
    assert confirm_frame - first_visible <= FPS, f"confirmed {confirm_frame - first_visible} frames after entering"

    # With a cooldown shorter than the gap between the visits, each visit is an event.
    summary, events, _ = run_pipeline(tmp_path / "short", bundle, video, recognition={"cooldown_s": 1})
    assert [e.person_id for e in events] == ["barack_obama", "barack_obama"]


def test_without_a_configured_threshold_the_one_for_the_gallery_size_is_applied(tmp_path, bundle, member_video):
    video, _ = member_video
    expected = threshold_for_gallery(len(MEMBERS), score="track")
    assert expected not in (TEST_THRESHOLD, DEFAULT_THRESHOLD), "the event must show which threshold was used"
    summary, events, runner = run_pipeline(tmp_path, bundle, video, recognition={"threshold": None})
    assert [e.person_id for e in events] == ["barack_obama"]
    assert events[0].threshold == expected and events[0].best_similarity >= expected
    assert runner.processor.threshold() == expected


def random_gallery(persons: int, version: str) -> Gallery:
    rng = np.random.default_rng(persons)
    vectors = rng.standard_normal((persons, 128)).astype(np.float32)
    ids = [f"p{i}" for i in range(persons)]
    return Gallery(
        vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
        ids,
        {pid: PersonRow(person_id=pid) for pid in ids},
        version=version,
        embedder=ModelRef(id="sface", sha256="0" * 64),
        score=score_spec(persons),
    )


def test_the_device_threshold_follows_the_live_gallery_unless_configured():
    live = LiveGallery(random_gallery(12, "v1"))
    processor = FrameProcessor(None, live, None, "dev", RecognitionConfig())
    # A video track's fused votes use the gallery's track threshold, calibrated on stranger tracks.
    assert processor.threshold() == threshold_for_gallery(12, score="track")
    live.swap(random_gallery(5_000, "v2"))  # the nightly sync swaps in a bigger gallery
    assert (
        processor.threshold() == threshold_for_gallery(5_000, score="track") > threshold_for_gallery(12, score="track")
    )
    assert processor.threshold(RecognitionConfig(threshold=0.6)) == 0.6


def test_a_video_of_strangers_gives_no_event(tmp_path, bundle, strangers_video):
    video, truth = strangers_video
    summary, events, _ = run_pipeline(tmp_path, bundle, video)
    assert events == []
    assert summary["confirmations"] == 0
    # Not vacuous: every stranger was detected, tracked and searched.
    assert summary["tracks"] >= len(truth.appearances())
    assert summary["faces_embedded"] >= 3 * len(truth.appearances())


def test_the_event_crop_is_small_and_only_the_matched_face_leaves(tmp_path, bundle, member_video):
    video, _ = member_video
    summary, events, _ = run_pipeline(tmp_path, bundle, video)
    raw = base64.b64decode(events[0].crop_jpeg_b64)
    assert raw.startswith(b"\xff\xd8") and len(raw) <= MAX_CROP_BYTES
    # Nothing but the outbox and the publisher's sink is written: no frames, no crops.
    written = sorted(p.name for p in tmp_path.iterdir())
    assert all(name.startswith(("outbox.sqlite3", "events.jsonl")) for name in written), written
    # And with crops switched off, the event carries none.
    _, events, _ = run_pipeline(tmp_path / "nocrop", bundle, video, recognition={"send_crop": False})
    assert events and events[0].crop_jpeg_b64 is None


def test_gallery_swaps_while_running_drop_no_frame(tmp_path, faces_dir, bundle, member_video):
    """The sync agent swaps from another thread; the frame loop keeps every frame and
    events carry the version that was current when they were confirmed."""
    video, truth = member_video
    models = face_models()
    without_member = build_bundle(
        faces_dir, tmp_path / "without", [m for m in MEMBERS if m != "barack_obama"], "without-obama"
    )
    galleries = [Gallery.from_bundle(load_bundle(b)) for b in (without_member, bundle)]
    live = LiveGallery(galleries[0], embedder=models.embedder_ref)
    swaps = threading.Event()

    def swap_back_and_forth(runner):
        # Obama is absent for the first visit (about frames 8-52), present for the second.
        while runner.processor.counters.frames < 60:
            live.swap(galleries[runner.processor.counters.frames % 2])
        live.swap(galleries[1])
        swaps.set()

    summary, events, _ = run_pipeline(tmp_path, bundle, video, gallery=live, during=swap_back_and_forth)
    assert swaps.is_set() and live.swaps > 10
    assert summary["frames_processed"] == summary["frames_read"] == truth.frames
    assert summary["frames_dropped"] == 0
    assert [(e.person_id, e.gallery_version) for e in events] == [("barack_obama", "test-1")]


def test_live_gallery_refuses_another_embedder(bundle):
    from edge_app.gallery.bundle import BundleError

    gallery = Gallery.from_bundle(load_bundle(bundle))
    live = LiveGallery(gallery, embedder=face_models().embedder_ref)
    with pytest.raises(BundleError, match="built with embedder"):
        LiveGallery(gallery, embedder={"id": "arcface", "sha256": "0" * 64})
    foreign = Gallery(gallery.vectors, gallery.labels, gallery.persons, version="x", embedder=gallery.embedder)
    object.__setattr__(foreign, "embedder", type(gallery.embedder)(id="arcface", sha256="0" * 64))
    with pytest.raises(BundleError, match="built with embedder arcface"):
        live.swap(foreign)
    assert live.current() is gallery, "a refused swap keeps the running gallery"


def test_runner_applies_a_live_update_and_refuses_a_bad_one(tmp_path, bundle, member_video):
    video, _ = member_video

    def raise_threshold(runner):
        runner.apply_update({"recognition": {"threshold": "0.99"}})  # nobody reaches 0.99

    summary, events, runner = run_pipeline(tmp_path, bundle, video, during=raise_threshold)
    assert events == [] and runner.processor.settings.threshold == 0.99
    with pytest.raises(ConfigError, match=r"recognition\.confirm_window = '0'"):
        runner.apply_update({"recognition": {"confirm_window": "0"}})
    assert runner.config.recognition.threshold == 0.99, "a refused update leaves the configuration as it was"


def test_a_camera_added_while_running_is_processed_too(tmp_path, bundle, member_video, strangers_video):
    member, member_truth = member_video
    strangers, strangers_truth = strangers_video
    added = threading.Event()

    def add_camera(runner):
        while runner.processor.counters.frames < 20:
            threading.Event().wait(0.01)
        runner.apply_update(
            {"cameras": [{"id": "door", "source": str(member)}, {"id": "yard", "source": str(strangers)}]}
        )
        added.set()

    summary, events, runner = run_pipeline(tmp_path, bundle, member, during=add_camera)
    assert added.is_set()
    assert summary["frames_read"] == member_truth.frames + strangers_truth.frames
    assert set(runner.processor.trackers) == {"door", "yard"}
    assert [(e.camera_id, e.person_id) for e in events] == [("door", "barack_obama")]


def test_overlapped_detection_gives_the_same_result_as_the_serial_loop(tmp_path, bundle, member_video):
    video, truth = member_video
    serial, serial_events, _ = run_pipeline(tmp_path / "serial", bundle, video)
    overlapped, events, runner = run_pipeline(tmp_path / "overlap", bundle, video, overlap=True)
    assert overlapped["frames_processed"] == truth.frames and overlapped["frames_dropped"] == 0
    assert [e.person_id for e in events] == [e.person_id for e in serial_events] == ["barack_obama"]
    assert overlapped["faces"] == serial["faces"]
    assert runner.detect_error is None
