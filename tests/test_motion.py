"""Motion gating on generated scenes of real faces (slow light changes, sensor noise): empty
frames are skipped, no face is missed, and the pipeline confirms the same person on the
same frames with the gate as without it."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from demo.scenes import make_scene, walk
from edge_app.pipeline.motion import MotionGate, MotionSettings
from tests.test_edge_fixtures import face_models, unseen_photo
from tests.test_edge_pipeline import run_pipeline

FPS = 15


@pytest.fixture(scope="module")
def quiet_scene(tmp_path_factory, faces_dir):
    """16 s of an empty scene (light wave, noise), a gallery member crossing from 6 s to 9 s."""
    out = tmp_path_factory.mktemp("motion") / "quiet.avi"
    actors = [walk(unseen_photo(faces_dir, "barack_obama"), "barack_obama", 6.0, 3.0, light=(0.9, 1.1))]
    truth = make_scene(actors, out, seconds=16.0, fps=FPS, models=face_models(), seed=4, light_wave=0.25)
    return out, truth


def frames_of(video) -> list[np.ndarray]:
    reader = cv2.VideoCapture(str(video))
    frames = []
    while (item := reader.read())[0]:
        frames.append(item[1])
    reader.release()
    return frames


def test_empty_frames_are_skipped_and_every_visible_face_is_looked_at(quiet_scene):
    video, truth = quiet_scene
    gate = MotionGate(MotionSettings(recheck_s=1e9))  # no periodic recheck: the motion test alone
    decisions = [gate.worth_detecting("door", image, index / FPS, has_tracks=False) for index, image in enumerate(frames_of(video))]  # fmt: skip
    first, last = truth.appearances()["barack_obama"]
    visible = set(range(first, last + 1))
    empty = [d for i, d in enumerate(decisions) if i not in visible and i > 0]
    assert sum(not d for d in empty) / len(empty) >= 0.9, "light changes and noise are not motion"
    looked = [i for i in sorted(visible) if decisions[i]]
    assert looked and looked[0] <= first + 1, "the face is looked at as soon as it appears"
    assert len(looked) / len(visible) >= 0.9, "a walking face keeps the gate open"


def test_a_still_scene_is_still_checked_every_recheck_interval():
    gate = MotionGate(MotionSettings(recheck_s=2.0))
    still = np.full((480, 640, 3), 100, np.uint8)
    decisions = [gate.worth_detecting("door", still, index / 10, has_tracks=False) for index in range(100)]
    assert sum(decisions) == 5  # the first frame, then every 2 s of a 10 s still scene
    assert gate.worth_detecting("door", still, 10.05, has_tracks=True), "live tracks are always followed"
    off = MotionGate(MotionSettings(enabled=False))
    assert all(off.worth_detecting("door", still, index / 10, has_tracks=False) for index in range(20))


def test_cameras_started_together_recheck_on_their_own_frames_not_all_at_once():
    # 16 still cameras on one clock: aligned rechecks meant 16 detections on one frame every
    # 2 s, the bursts in which a gated device dropped frames (benchmarks/bench_cameras.py).
    gate = MotionGate(MotionSettings(recheck_s=2.0))
    still = np.full((120, 160, 3), 100, np.uint8)
    cameras = [f"cam{i}" for i in range(16)]
    per_frame, last = [], {}
    gaps = []
    for index in range(200):  # 20 s at 10 fps
        clock = index / 10
        detected = [c for c in cameras if gate.worth_detecting(c, still, clock, has_tracks=False)]
        per_frame.append(len(detected))
        for camera in detected:
            if camera in last:
                gaps.append(clock - last[camera])
            last[camera] = clock
    assert per_frame[0] == 16, "every camera is looked at on its first frame"
    assert max(per_frame[1:]) <= 3, f"rechecks bunched up: {max(per_frame[1:])} cameras on one frame"
    assert max(gaps) <= 2.0 + 0.1 + 1e-9, "no camera waits longer than recheck_s (and its next frame)"
    assert sum(per_frame[1:]) >= 16 * 9, "each camera is still rechecked every 2 s"


def test_the_pipeline_confirms_the_same_person_on_the_same_frames_with_the_gate(tmp_path, bundle, quiet_scene):
    video, _ = quiet_scene
    results = {}
    for name, enabled in (("gated", True), ("ungated", False)):
        (tmp_path / name).mkdir()
        summary, matches, runner = run_pipeline(tmp_path / name, bundle, video, motion={"enabled": enabled})
        results[name] = (summary, [(m.person_id, r.confirm_frame) for m, r in zip(matches, runner.processor.events, strict=True)])  # fmt: skip
    gated, ungated = results["gated"], results["ungated"]
    assert [p for p, _ in gated[1]] == [p for p, _ in ungated[1]] == ["barack_obama"]
    assert abs(gated[1][0][1] - ungated[1][0][1]) <= 1, (gated[1], ungated[1])
    assert gated[0]["frames_skipped_no_motion"] >= 0.5 * gated[0]["frames_processed"]
    assert ungated[0]["frames_skipped_no_motion"] == 0
    assert gated[0]["model_s"]["detect"] < 0.6 * ungated[0]["model_s"]["detect"]
