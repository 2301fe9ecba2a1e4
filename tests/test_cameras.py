"""Cameras that come and go, against a real RTSP server (GStreamer's gst-rtsp-server,
tests/rtsp_server.py) that is down at start, comes up, is killed mid-run and comes back.

- the capture thread alone: states, reconnection within one backoff interval, frames after;
- ``mpd edge run`` whose only camera is down at start: it stays up, reports the camera in
  health, and confirms the gallery member once the camera serves the scene, twice over
  (after the camera was killed and came back)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from edge_app.pipeline.capture import Capture, FrameSource, Reconnect
from tests.servers import RtspServer, rtsp_server_available
from tests.test_edge_fixtures import TEST_THRESHOLD
from tests.test_edge_run_live import Messages

MPD = [sys.executable, "-m", "mpd_cli"]


@pytest.fixture(scope="module")
def rtsp_available():
    reason = rtsp_server_available()
    if reason:
        pytest.skip(reason)


def write_frames(video: Path, out: Path) -> str:
    """The video's frames as JPEG files (what the RTSP server streams); returns their glob."""
    out.mkdir(parents=True, exist_ok=True)
    reader = cv2.VideoCapture(str(video))
    index = 0
    while (item := reader.read())[0]:
        cv2.imwrite(str(out / f"{index:05d}.jpg"), item[1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        index += 1
    reader.release()
    assert index > 0, f"no frames in {video}"
    return str(out / "*.jpg")


def wait_until(condition, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_camera_down_at_start_is_retried_comes_up_within_one_backoff_interval_and_survives_a_restart(
    tmp_path, rtsp_available, member_video
):
    server = RtspServer(write_frames(member_video[0], tmp_path / "frames"), fps=15, workdir=tmp_path)
    reconnect = Reconnect(initial_s=0.25, max_s=2.0, down_after_s=1.5)
    capture = Capture("door", FrameSource(server.url), reconnect=reconnect)  # nothing listens yet: no error
    capture.start()
    try:
        wait_until(lambda: capture.state()[0] == "down", 10, "camera reported down")
        state, since, error = capture.state()
        assert capture.frames_read == 0 and "unreachable" in error
        time.sleep(2.5)  # the backoff has reached its cap: the worst case for coming back

        server.start()
        came_back = time.monotonic()
        wait_until(lambda: capture.take(0.05) is not None, reconnect.max_s + 5, "first frame after the camera came up")
        # One backoff interval (the wait before the next try) plus opening the stream (~1 s of analysis).
        assert time.monotonic() - came_back <= reconnect.max_s + 3.0
        assert capture.state()[0] == "up"
        for _ in range(15):  # frames buffered while the stream was analysed come at once
            capture.take(0.5)
        started, taken = time.monotonic(), 0
        while taken < 30:
            taken += capture.take(0.5) is not None
        assert 11 <= taken / (time.monotonic() - started) <= 19, "frames arrive at the camera's pace (15 fps)"

        server.stop()  # the camera loses power mid-stream
        wait_until(lambda: capture.state()[0] == "reconnecting", 15, "camera reported reconnecting")
        assert capture.is_alive()
        server.start()
        before = capture.frames_read
        wait_until(lambda: capture.frames_read > before + 10, reconnect.max_s + 10, "frames after the restart")
        assert capture.state()[0] == "up" and capture.connects == 2
    finally:
        capture.stop()
        capture.join(10)
        server.stop()
    assert not capture.is_alive() and capture.error is None


def is_health(condition):
    return lambda m: m.get("schema") == "mpd.health/2" and condition(m)


def camera_state(message: dict, camera_id: str = "door") -> str | None:
    return message.get("camera_health", {}).get(camera_id, {}).get("state")


@pytest.mark.slow
def test_a_run_whose_only_camera_is_down_at_start_stays_up_and_detects_once_it_comes_back(
    tmp_path, rtsp_available, bundle, member_video
):
    server = RtspServer(write_frames(member_video[0], tmp_path / "frames"), fps=15, workdir=tmp_path)
    config = tmp_path / "edge.json"
    config.write_text(
        json.dumps(
            {
                "device_id": "test-thing",
                "cameras": [{"id": "door", "source": server.url}],
                "capture": {"reconnect_initial_s": 0.25, "reconnect_max_s": 2.0, "down_after_s": 1.0},
                "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                "health_interval_s": 0.3,
                "recognition": {"threshold": TEST_THRESHOLD, "cooldown_s": 0},
            }
        )
    )
    command = ["edge", "run", "--bundle", str(bundle), "--allow-unsigned", "--config", str(config)]
    process = subprocess.Popen(
        MPD + command + ["--publisher", "stdout"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "stderr.log", "w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        messages = Messages(process.stdout)
        down = messages.wait_for(is_health(lambda m: camera_state(m) == "down"), "health with the camera down", 120)
        assert down["cameras"] == ["door"] and down["fps"] == 0
        assert process.poll() is None, "the run must not end because its camera is unreachable"

        server.start()
        match = messages.wait_for(lambda m: m.get("schema") == "mpd.match/1", "a match once the camera is up", 60)
        assert match["person_id"] == "barack_obama" and match["camera_id"] == "door"
        up = messages.wait_for(is_health(lambda m: camera_state(m) == "up"), "health with the camera up", 10)
        assert up["camera_health"]["door"]["fps"] > 0

        server.stop()  # killed mid-run
        messages.wait_for(is_health(lambda m: camera_state(m) in ("reconnecting", "down")), "camera lost", 30)
        server.start()
        messages.wait_for(is_health(lambda m: camera_state(m) == "up"), "camera back", 30)
        messages.wait_for(lambda m: m.get("schema") == "mpd.match/1", "a match after the camera came back", 60)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            server.stop()
    time.sleep(0.3)
    messages.drain()
    summary = messages.seen[-1]
    assert summary["schema"] == "mpd.edge-summary/1", (tmp_path / "stderr.log").read_text()[-3000:]
    assert summary["cameras"]["door"]["reconnects"] >= 1 and summary["events"] >= 2
