"""The health gate decides whether a new release came up: RUNNING to the nucleus once the
real pipeline's health report shows frames processed, ERRORED when it does not within the
deadline (three ERRORED starts make the component BROKEN and the deployment rolls back).

The nucleus socket is the fake from test_ipc_config.py (no nucleus runs here; it records
UpdateState requests); the awsiotsdk client above it, the pipeline and its health file are
real. What the nucleus then does with ERRORED (BROKEN after three, rollback) is its own
documented behaviour and cannot run here (docs/greengrass.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from greengrass import health_gate
from tests.test_ipc_config import FakeNucleusConnection


@pytest.fixture()
def nucleus(monkeypatch):
    """The real GreengrassCoreIPCClientV2 over the fake socket, wherever the gate creates one."""
    from awsiot.greengrasscoreipc import clientv2

    fake = FakeNucleusConnection({})
    real_client = clientv2.GreengrassCoreIPCClientV2
    monkeypatch.setattr(clientv2, "GreengrassCoreIPCClientV2", lambda: real_client(client=fake))
    monkeypatch.setenv("SVCUID", "test-svcuid")
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", "/nonexistent/ipc.socket")
    return fake


def _write_health(path, frames: int) -> None:
    path.write_text(json.dumps({"schema": "mpd.health/1", "device_id": "d", "detail": {"frames": frames}}))


def test_running_is_reported_once_frames_are_processed_and_the_release_is_remembered(nucleus, tmp_path):
    health, marker = tmp_path / "health.json", tmp_path / "healthy" / "release-a"
    writer = threading.Timer(0.5, _write_health, (health, 0))
    later = threading.Timer(1.2, _write_health, (health, 7))
    writer.start(), later.start()
    started = time.monotonic()
    assert health_gate.await_healthy(health, marker, 20, health_gate.ipc_reporter(), poll_s=0.1)
    assert 1.0 < time.monotonic() - started < 10  # not on the frames=0 report, on the frames=7 one
    assert nucleus.states == ["RUNNING"]
    assert json.loads(marker.read_text())["frames"] == 7


def test_no_frames_within_the_deadline_is_reported_errored(nucleus, tmp_path):
    health = tmp_path / "health.json"
    _write_health(health, 0)  # the pipeline runs but processes nothing (camera dead, bad build)
    assert not health_gate.await_healthy(health, tmp_path / "m", 1.5, health_gate.ipc_reporter(), poll_s=0.1)
    assert nucleus.states == ["ERRORED"]
    assert not (tmp_path / "m").exists()


def test_a_report_left_by_an_earlier_run_does_not_count(nucleus, tmp_path):
    health = tmp_path / "health.json"
    _write_health(health, 5000)
    os.utime(health, (time.time() - 3600, time.time() - 3600))
    assert not health_gate.await_healthy(health, tmp_path / "m", 1.0, health_gate.ipc_reporter(), poll_s=0.1)
    assert nucleus.states == ["ERRORED"]


def test_a_release_proven_healthy_here_passes_at_once_without_a_camera(nucleus, tmp_path):
    marker = tmp_path / "healthy" / "release-a"
    marker.parent.mkdir()
    marker.write_text("{}")
    assert health_gate.await_healthy(tmp_path / "absent.json", marker, 1.0, health_gate.ipc_reporter())
    assert nucleus.states == ["RUNNING"]


def test_a_gate_whose_pipeline_is_gone_reports_nothing(nucleus, tmp_path):
    assert not health_gate.await_healthy(
        tmp_path / "h.json", tmp_path / "m", 5, health_gate.ipc_reporter(), still_wanted=lambda: False
    )
    assert nucleus.states == []


def test_outside_a_nucleus_the_gate_fails_clearly(monkeypatch):
    monkeypatch.delenv("SVCUID", raising=False)
    with pytest.raises(health_gate.HealthGateError, match="not running as a Greengrass v2 component"):
        health_gate.ipc_reporter()


def test_the_real_pipeline_passes_the_gate_and_a_broken_release_does_not(nucleus, tmp_path, bundle, member_video):
    """A real ``mpd edge run`` writes the health file the gate reads; a release whose camera
    source cannot be opened never does, and the gate reports ERRORED."""
    env = {
        **os.environ,
        "MPD_HEALTH_FILE": str(tmp_path / "good" / "health.json"),
        "MPD_HEALTH_INTERVAL_S": "0.5",
    }
    env.pop("SVCUID", None)
    (tmp_path / "good").mkdir()
    (tmp_path / "bad").mkdir()
    command = [sys.executable, "-m", "mpd_cli", "edge", "run", "--bundle", str(bundle), "--publisher", "stdout"]
    command += ["--outbox", str(tmp_path / "good" / "outbox.sqlite3"), "--realtime", "--allow-unsigned"]
    log = open(tmp_path / "good" / "stderr.log", "w")
    good = subprocess.Popen(
        [*command, "--source", str(member_video[0])], env=env, stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        report = health_gate.ipc_reporter()
        healthy = health_gate.await_healthy(tmp_path / "good" / "health.json", tmp_path / "good" / "ok", 120, report)
        assert healthy, (tmp_path / "good" / "stderr.log").read_text()[-3000:]
    finally:
        good.terminate()
        good.wait(60)
        log.close()
    assert nucleus.states == ["RUNNING"]

    env["MPD_HEALTH_FILE"] = str(tmp_path / "bad" / "health.json")
    bad = subprocess.Popen(
        [*command, "--source", "rtsp://127.0.0.1:9/none"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert not health_gate.await_healthy(tmp_path / "bad" / "health.json", tmp_path / "bad" / "ok", 8, report)
    finally:
        bad.kill()
        bad.wait(60)
    assert nucleus.states == ["RUNNING", "ERRORED"]
