"""``mpd edge run`` as a process: MQTT with mutual TLS to a real mosquitto, kill -9 and
restart, SIGTERM, bad configuration and bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_edge_fixtures import TEST_THRESHOLD
from tests.test_publishers import Subscriber

MPD = [sys.executable, "-m", "mpd_cli"]
# The shared test bundle is unsigned (tests/test_edge_fixtures.py): say so explicitly.
UNSIGNED = "--allow-unsigned"


def mqtt_config(path: Path, broker, outbox: Path, **recognition) -> Path:
    settings = broker.client_settings()
    config = {
        "device_id": "test-thing",
        "publisher": "mqtt",
        "mqtt": {k: settings[k] for k in ("host", "port", "ca", "cert", "key")} | {"ack_timeout_s": 2},
        "outbox": {"path": str(outbox), "backoff_initial_s": 0.2, "backoff_max_s": 1},
        "health_interval_s": 0.5,
        "recognition": {"cooldown_s": 1, "threshold": TEST_THRESHOLD, **recognition},
    }
    path.write_text(json.dumps(config))
    return path


def run(args: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(MPD + args, capture_output=True, text=True, timeout=timeout, **kwargs)


def summary_of(stdout: str) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines and lines[-1]["schema"] == "mpd.edge-summary/1", stdout[-2000:]
    return lines[-1]


def test_events_and_health_reach_the_broker_over_mutual_tls(tmp_path, broker, bundle, member_video):
    video, _ = member_video
    matches = Subscriber(broker, "mpd/test-thing/match", client_id="backend-match")
    health = Subscriber(broker, "mpd/test-thing/health", client_id="backend-health")
    try:
        config = mqtt_config(tmp_path / "edge.json", broker, tmp_path / "outbox.sqlite3")
        result = run(
            ["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(video), "--config", str(config)]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        summary = summary_of(result.stdout)
        assert summary["events"] == 2 and summary["outbox_depth"] == 0
        received = matches.wait_for(2)
        assert sorted(m["event_id"] for m in received) == sorted(summary["event_ids"])
        assert {m["person_id"] for m in received} == {"barack_obama"}
        assert health.wait_for(1), "no health message"
        assert health.messages[0]["gallery_version"] == "test-1" and "outbox_depth" in health.messages[0]
        assert "fps" in result.stderr and "gallery test-1" in result.stderr, "status line on stderr"
    finally:
        matches.close()
        health.close()


def _pending_ids(outbox: Path) -> set[str]:
    if not outbox.exists():
        return set()
    try:
        with sqlite3.connect(outbox, timeout=5) as db:
            return {row[0] for row in db.execute("SELECT event_id FROM events WHERE sent_at IS NULL")}
    except sqlite3.OperationalError:
        return set()


def test_kill_9_mid_run_then_restart_loses_no_event(tmp_path, broker, bundle, member_video):
    video, _ = member_video
    outbox = tmp_path / "outbox.sqlite3"
    config = mqtt_config(tmp_path / "edge.json", broker, outbox)
    broker.stop()  # uplink down: confirmed events wait in the outbox
    process = subprocess.Popen(
        MPD
        + ["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(video)]
        + ["--config", str(config), "--realtime"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not _pending_ids(outbox) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the process was killed mid-run"
    pending = _pending_ids(outbox)
    assert pending, "no event was confirmed before the kill"

    broker.start()
    subscriber = Subscriber(broker, "mpd/test-thing/match", client_id="backend-restart")
    try:
        result = run(
            ["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(video), "--config", str(config)]
            + ["--max-frames", "1", "--drain-timeout", "30"]
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert summary_of(result.stdout)["outbox_depth"] == 0
        received = [m["event_id"] for m in subscriber.wait_for(len(pending))]
        assert set(received) == pending
        assert len(received) == len(pending), "each event once"
    finally:
        subscriber.close()


def test_sigterm_stops_cleanly_with_a_summary(tmp_path, bundle, member_video):
    video, _ = member_video
    process = subprocess.Popen(
        MPD
        + ["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(video), "--realtime"]
        + ["--outbox", str(tmp_path / "o.sqlite3"), "--publisher", "stdout"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-3000:]
    summary = summary_of(stdout)
    assert summary["interrupted"] is True
    assert 0 < summary["frames_read"] < 135, "stopped before the end of the 9 s video"
    for key in ("frames_processed", "frames_dropped", "fps", "faces", "tracks", "events", "latency_s"):
        assert key in summary


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"recognition": {"threshold": "1.7"}}, "recognition.threshold = '1.7'"),
        ({"recognition": {"confirm_frames": 9, "confirm_window": 5}}, "confirm_frames (9) is larger"),
        ({"publisher": "mqtt"}, "publisher 'mqtt' needs mqtt.host"),
        ({"outbox": {"max_events": "many"}}, "outbox.max_events = 'many'"),
    ],
)
def test_bad_configuration_fails_fast_naming_key_and_value(tmp_path, bundle, config, expected):
    path = tmp_path / "edge.json"
    path.write_text(json.dumps(config))
    started = time.monotonic()
    result = run(["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", "0", "--config", str(path)], timeout=60)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30


def test_bad_inputs_are_named(tmp_path, bundle):
    outbox = ["--outbox", str(tmp_path / "o.sqlite3")]
    missing = run(["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(tmp_path / "nope.avi"), *outbox])
    assert missing.returncode != 0 and "nope.avi: no such file" in missing.stderr
    corrupt = tmp_path / "corrupt.avi"
    corrupt.write_bytes(os.urandom(50_000))
    result = run(["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(corrupt), *outbox])
    assert result.returncode != 0 and "corrupt.avi: not a readable video" in result.stderr
    # A tampered bundle is refused before anything runs.
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    for item in bundle.iterdir():
        (tampered / item.name).write_bytes(item.read_bytes())
    (tampered / "labels.json").write_text(json.dumps(["someone-else"] * 12))
    result = run(["edge", "run", "--bundle", str(tampered), UNSIGNED, "--source", str(corrupt), *outbox])
    assert result.returncode != 0 and "gallery refused" in result.stderr and "labels.json" in result.stderr
    # An image folder with a broken file and a non-image: those are skipped and reported.
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    import cv2
    import numpy as np

    cv2.imwrite(str(folder / "ok.png"), np.full((480, 640, 3), 120, np.uint8))
    result = run(["edge", "run", "--bundle", str(bundle), UNSIGNED, "--source", str(folder), *outbox])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = summary_of(result.stdout)
    assert summary["frames_processed"] == 1
    assert any("broken.jpg" in error for error in summary["errors"])


def test_an_unsigned_bundle_is_refused_unless_allowed_explicitly(tmp_path, bundle, monkeypatch):
    """Issue 13 row 13: an unsigned gallery used to run with only a warning."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    monkeypatch.delenv("MPD_GALLERY_PUBLIC_KEY", raising=False)
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(folder / "empty.png"), np.full((480, 640, 3), 90, np.uint8))
    args = ["edge", "run", "--bundle", str(bundle), "--source", str(folder), "--outbox", str(tmp_path / "o.sqlite3")]
    no_key = run(args)
    assert no_key.returncode != 0 and "gallery refused" in no_key.stderr and "no gallery public key" in no_key.stderr
    assert "--allow-unsigned" in no_key.stderr and "Traceback" not in no_key.stderr

    key = tmp_path / "gallery.pub"
    pem = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    key.write_bytes(pem)
    unsigned = run(args + ["--public-key", str(key)])
    assert unsigned.returncode != 0 and "unsigned bundle (manifest.sig is missing)" in unsigned.stderr

    allowed = run(args + [UNSIGNED])
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert summary_of(allowed.stdout)["frames_processed"] == 1
    assert "running an unchecked gallery" in allowed.stderr

    # A signature that does not verify is refused whatever the flag says.
    forged = tmp_path / "forged"
    forged.mkdir()
    for item in bundle.iterdir():
        (forged / item.name).write_bytes(item.read_bytes())
    (forged / "manifest.sig").write_bytes(b"AAAA" * 22 + b"\n")
    refused = run(["edge", "run", "--bundle", str(forged), "--public-key", str(key), UNSIGNED] + args[4:])
    assert refused.returncode != 0 and "bad signature" in refused.stderr
