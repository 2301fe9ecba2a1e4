"""The capture's frame buffer: a burst of work is caught up on, a device that stays behind
loses the oldest frames (counted), never more than ``buffer_frames`` are held, and frames
are handed out oldest first."""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_app.config import ConfigError, load_config
from edge_app.pipeline.capture import Capture


class CountingSource:
    """A recorded source of ``frames`` tiny frames at ``fps``; each frame's pixels hold its index."""

    live = False
    kind = "file"
    spec = "counting"

    def __init__(self, frames: int, fps: float = 200.0) -> None:
        self.fps = fps
        self.frames = frames
        self.position = 0

    def read(self) -> np.ndarray | None:
        if self.position >= self.frames:
            return None
        image = np.full((4, 4, 3), self.position, np.uint8)
        self.position += 1
        return image

    def close(self) -> None:
        pass


def drain(capture: Capture) -> list[int]:
    indexes = []
    while (frame := capture.take(0.0)) is not None:
        assert int(frame.image[0, 0, 0]) == frame.index
        indexes.append(frame.index)
    return indexes


@pytest.mark.parametrize("buffer_frames", [1, 3, 5])
def test_a_device_that_stays_behind_keeps_the_newest_frames_oldest_first_and_counts_the_rest(buffer_frames):
    capture = Capture("cam", CountingSource(20), realtime=True, buffer_frames=buffer_frames)
    capture.start()
    assert capture.finished.wait(5), "the source should end within 0.1 s"
    assert not capture.exhausted  # frames still waiting
    assert drain(capture) == list(range(20 - buffer_frames, 20))
    assert capture.dropped == 20 - buffer_frames
    assert capture.exhausted


def test_a_burst_shorter_than_the_buffer_loses_no_frame():
    """The pipeline stops taking for about two frame intervals (a burst of detections for other
    cameras) and then catches up: a buffer with room to spare loses nothing; one slot does."""
    results = {}
    for buffer_frames in (1, 5):
        capture = Capture("cam", CountingSource(30, fps=20.0), realtime=True, buffer_frames=buffer_frames)
        taken: list[int] = []
        capture.start()
        while not capture.exhausted:
            frame = capture.take(0.2)
            if frame is None:
                continue
            taken.append(frame.index)
            if frame.index == 10:
                time.sleep(0.11)  # 2.2 frame intervals without taking
        results[buffer_frames] = (taken, capture.dropped)
    taken, dropped = results[5]
    assert taken == list(range(30)) and dropped == 0
    taken, dropped = results[1]
    assert dropped >= 1 and len(taken) == 30 - dropped
    assert taken == sorted(taken)


def test_a_lossless_file_read_waits_for_the_pipeline_whatever_the_buffer():
    capture = Capture("cam", CountingSource(12), realtime=False, buffer_frames=3)
    capture.start()
    taken = []
    while not capture.exhausted:
        frame = capture.take(0.2)
        if frame is not None:
            taken.append(frame.index)
    assert taken == list(range(12)) and capture.dropped == 0


def test_buffer_size_is_validated(tmp_path):
    with pytest.raises(ValueError, match="buffer_frames"):
        Capture("cam", CountingSource(1), buffer_frames=0)
    config = tmp_path / "edge.json"
    config.write_text('{"capture": {"buffer_frames": 0}}')
    with pytest.raises(ConfigError, match="capture.buffer_frames"):
        load_config(config)
    config.write_text('{"capture": {"buffer_frames": 5}}')
    assert load_config(config).capture.buffer_frames == 5
