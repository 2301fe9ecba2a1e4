"""The frame scheduler on plain frames and a simulated clock: round robin when nobody is
deciding, deciding cameras first (as many as the loop can come back to in time), and no
camera holding the focus."""

from __future__ import annotations

import itertools
import math

import numpy as np

from edge_app.pipeline.capture import Frame
from edge_app.pipeline.schedule import FOCUS_STREAK, FOCUS_TURN_S, REVISITS_PER_TIMEOUT, FrameScheduler

IMAGE = np.zeros((4, 4, 3), np.uint8)
TIMEOUT_S = 1.0
FPS = 10.0


class Clock:
    now = 0.0


class Feed:
    """A camera at 10 fps on the simulated clock: ``take`` gives its newest frame if not taken yet."""

    def __init__(self, camera_id: str, clock: Clock) -> None:
        self.camera_id = camera_id
        self.clock = clock
        self.taken = -1
        self.exhausted = False
        self.paused = False

    def take(self, timeout: float) -> Frame | None:
        index = math.floor(self.clock.now * FPS + 1e-9)
        if self.paused or index <= self.taken:
            return None
        self.taken = index
        return Frame(self.camera_id, index, IMAGE, self.clock.now, 0.0, index / FPS)


def serve(scheduler, feeds, deciding: set[str], frames: int, cost_s: float) -> list[str]:
    """Process ``frames`` frames, each costing ``cost_s`` of simulated time; the served cameras in order."""
    served = []
    clock = feeds[0].clock
    while len(served) < frames:
        frame, _ = scheduler.next_frame(feeds)
        if frame is None:
            clock.now += 0.001
            continue
        clock.now += cost_s
        scheduler.processed(frame, frame.camera_id in deciding, TIMEOUT_S)
        served.append(frame.camera_id)
    return served


def back_within_two_frames(served: list[str]) -> float:
    """The fraction of frames whose camera had a frame at most two frames (0.2 s) before."""
    return sum(served[i] in served[i - 2 : i] for i in range(2, len(served))) / (len(served) - 2)


def cameras(count: int) -> list[Feed]:
    clock = Clock()
    return [Feed(f"cam{i}", clock) for i in range(count)]


def test_cameras_are_served_round_robin_while_nobody_is_deciding():
    feeds = cameras(4)
    served = serve(FrameScheduler(), feeds, set(), 12, cost_s=0.1)
    assert served == ["cam0", "cam1", "cam2", "cam3"] * 3


def test_a_deciding_camera_is_served_first_and_the_others_get_the_time_left():
    feeds = cameras(4)
    scheduler = FrameScheduler()
    served = serve(scheduler, feeds, {"cam2"}, 12, cost_s=0.05)
    assert served[:3] == ["cam0", "cam1", "cam2"]
    # cam2 has a new frame every 0.1 s, i.e. every other frame: it gets each one, the others share the rest.
    assert served[3:] == ["cam3", "cam2", "cam0", "cam2", "cam1", "cam2", "cam3", "cam2", "cam0"]
    feeds[2].paused = True  # no new frames from cam2: the others are served meanwhile
    assert serve(scheduler, feeds, {"cam2"}, 3, cost_s=0.05) == ["cam1", "cam3", "cam0"]


def test_a_focus_that_could_take_all_the_time_still_leaves_frames_for_the_others():
    feeds = cameras(4)
    served = serve(FrameScheduler(), feeds, {"cam0"}, 41, cost_s=0.1)  # cam0 alone would fill the device
    assert served[1:36] == (["cam0"] * FOCUS_STREAK + ["cam1"] + ["cam0"] * FOCUS_STREAK + ["cam2"]
                          + ["cam0"] * FOCUS_STREAK + ["cam3"]) * 2 + ["cam0"] * FOCUS_STREAK + ["cam1"]  # fmt: skip


def test_no_camera_holds_the_focus_longer_than_its_turn():
    feeds = cameras(3)
    scheduler = FrameScheduler(focus=1)
    served = serve(scheduler, feeds, {"cam0", "cam1"}, 100, cost_s=0.1)
    focused = [camera for camera in served[3::2]]  # every other frame goes to the focus
    turns = [len(list(run)) for _, run in itertools.groupby(focused)]
    assert len(turns) >= 3, "the two deciding cameras take turns"
    assert all(turn <= FOCUS_TURN_S * FPS / 2 + 2 for turn in turns), turns


def test_the_focus_is_what_the_loop_can_come_back_to_in_time():
    revisit_s = TIMEOUT_S / REVISITS_PER_TIMEOUT
    feeds = cameras(8)
    scheduler = FrameScheduler(focus=8)
    everyone = {feed.camera_id for feed in feeds}
    # 8 cameras at 0.1 s a frame: a round takes 0.8 s. The focus shrinks to what is come back
    # to within revisit_s (one or two cameras, and a frame for the rest now and then).
    served = serve(scheduler, feeds, everyone, 60, cost_s=0.1)
    assert 1 <= scheduler.focus <= int(revisit_s / 0.1)
    assert back_within_two_frames(served[20:]) >= 0.3
    round_robin = FrameScheduler(focus=0)  # the loop before: nobody is come back to in time
    assert back_within_two_frames(serve(round_robin, cameras(8), everyone, 60, cost_s=0.1)[20:]) == 0
    serve(scheduler, feeds, everyone, 80, cost_s=0.01)  # a quick device: all of them fit
    assert scheduler.focus == 8
