"""An overloaded device still confirms people: one camera after another, not nowhere.

The real runner, real models and real generated video, on a simulated clock: every camera
plays the same scene (everyone appears on every camera at once, the worst case) and the
device is made slow on purpose: each detection and each embedding costs a fixed amount of
simulated time. Plain round robin then visits each camera less often than
``track_timeout_s``, so every look at a face would start a new track and no one would be
confirmed. The simulated clock (a stand-in for a slow machine, which no test can pin
down on a shared one) is the only thing not real here; it makes the overload exact and
the test deterministic.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from edge_app.config import load_config
from edge_app.gallery.bundle import load_bundle
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.live import LiveGallery
from edge_app.pipeline.capture import Frame
from edge_app.pipeline.runner import EdgeRunner
from tests.test_edge_fixtures import TEST_THRESHOLD, face_models

DETECT_S = 0.05  # simulated cost of one detection on the slow device
EMBED_S = 0.025  # ... of one face embedding
GATE_S = 0.001  # ... of handing over a frame and the motion check
SCENE_S = 4.5  # the member walks through from 0.5 s to 3.5 s


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlowModels:
    """The real models; each call also spends simulated time (a device this slow)."""

    def __init__(self, models, clock: SimClock) -> None:
        self._models = models
        self._clock = clock

    def detect(self, image):
        self._clock.advance(DETECT_S)
        return self._models.detect(image)

    def embed_aligned(self, aligned):
        self._clock.advance(EMBED_S)
        return self._models.embed_aligned(aligned)

    def __getattr__(self, name):
        return getattr(self._models, name)


class SimSource:
    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.spec = "simulated"
        self.live = False
        self.skipped: list[str] = []


class SimCamera:
    """A camera at ``fps`` on the simulated clock, as a capture with ``buffer_frames: 1`` ("newest
    frame wins", the strictest setting): frames the device was too busy to take are dropped."""

    def __init__(self, camera_id: str, frames: list[np.ndarray], fps: float, clock: SimClock) -> None:
        self.camera_id = camera_id
        self.source = SimSource(fps)
        self.frames = frames
        self.clock = clock
        self.last_taken = -1
        self.frames_read = 0
        self.dropped = 0
        self.connects = 1
        self.error = None

    def _newest(self) -> int:
        return min(len(self.frames) - 1, math.floor(self.clock.now * self.source.fps + 1e-9))

    def take(self, timeout: float) -> Frame | None:
        self.clock.advance(GATE_S)
        index = self._newest()
        if index <= self.last_taken:
            return None
        self.dropped += index - self.last_taken - 1
        self.frames_read = index + 1
        self.last_taken = index
        return Frame(self.camera_id, index, self.frames[index], self.clock.now, 1e9 + self.clock.now,
                     index / self.source.fps)  # fmt: skip

    @property
    def exhausted(self) -> bool:
        return self.last_taken >= len(self.frames) - 1

    def state(self):
        return "up", 0.0, None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return False


@pytest.fixture(scope="module")
def member_frames(member_video):
    video, truth = member_video
    reader = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < SCENE_S * truth.fps and (item := reader.read())[0]:
        frames.append(item[1])
    reader.release()
    return frames, truth


def test_an_overloaded_device_confirms_the_person_camera_after_camera(tmp_path, bundle, member_frames):
    frames, truth = member_frames
    cameras = 16
    clock = SimClock()
    config = load_config(
        component_config={
            "device_id": "test-thing",
            "cameras": [{"id": f"cam{i}", "source": "simulated"} for i in range(cameras)],
            "recognition": {"threshold": TEST_THRESHOLD},
            "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        }
    )
    models = face_models()
    live = LiveGallery(Gallery.from_bundle(load_bundle(bundle)), embedder=models.embedder_ref)
    runner = EdgeRunner(config, SlowModels(models, clock), live, None, status=None)
    runner.captures = {f"cam{i}": SimCamera(f"cam{i}", frames, truth.fps, clock) for i in range(cameras)}
    summary = runner.run()
    runner.close()

    # Every camera needs a detection at once: one round over the cameras takes longer
    # than a track may go unseen, so plain round robin would confirm no one anywhere.
    assert cameras * (DETECT_S + EMBED_S) > config.recognition.track_timeout_s
    assert summary["frames_dropped"] > summary["frames_processed"], "the device is overloaded"
    confirmed = {e["camera_id"] for e in summary["confirmed_at"] if e["person_id"] == "barack_obama"}
    assert len(confirmed) >= cameras // 4, f"confirmed on {sorted(confirmed)} only"
    assert {e["person_id"] for e in summary["confirmed_at"]} == {"barack_obama"}
    # A camera in focus is looked at often enough for its track to go on: each confirmation
    # takes a few of the camera's frames, not a track per look.
    first, _ = truth.appearances()["barack_obama"]
    assert all(
        first <= e["first_frame"] and e["confirm_frame"] - e["first_frame"] <= 6 for e in summary["confirmed_at"]
    )
