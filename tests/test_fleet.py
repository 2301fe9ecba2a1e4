"""Fleet health: heartbeats through mosquitto (mutual TLS) or the SQS-fed Lambda on moto into
per-device state; problems (silent, dead camera, growing outbox, stale gallery) as
`mpd fleet status` prints them and as the metrics the alarms watch."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from edge_app.match_event import CameraHealth, HealthReport
from mpd_cli import main
from sync_service.fleet import handler
from sync_service.fleet.local import HealthRuleEngine
from sync_service.fleet.state import apply_report, problems
from sync_service.fleet.stores import SqliteDeviceStore, create_device_table, open_device_store

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
VERSION = "20261129T030000Z"


def report(device="site-1", sent=NOW, cameras=None, outbox=0, version=VERSION, interval=60.0) -> HealthReport:
    cameras = cameras if cameras is not None else {"gate": 12.0}
    return HealthReport(
        device_id=device, sent_at=sent, gallery_version=version, fps=sum(cameras.values()), outbox_depth=outbox,
        cameras=sorted(cameras), interval_s=interval,
        camera_health={c: CameraHealth(fps=f, state="up" if f > 0 else "reconnecting") for c, f in cameras.items()},
    )  # fmt: skip


def rule_event(health: HealthReport, topic: str | None = None, received: datetime = NOW) -> dict:
    return {
        "payload": base64.b64encode(health.to_json().encode()).decode(),
        "topic": topic or f"mpd/{health.device_id}/health",
        "received_ms": int(received.timestamp() * 1000),
    }


def test_problems_name_what_is_wrong_and_nothing_else():
    healthy = apply_report(None, report(), NOW)
    assert problems(healthy, NOW + timedelta(seconds=30)) == []
    assert problems(healthy, NOW + timedelta(minutes=3, seconds=1)) == ["silent for 3m"]
    dead = apply_report(healthy, report(sent=NOW + timedelta(minutes=1), cameras={"gate": 0.0, "yard": 9.5}), NOW)
    assert problems(dead, NOW) == ["camera gate reconnecting"]
    state = healthy
    for minute, depth in enumerate([0, 2, 5, 9], 1):
        state = apply_report(state, report(sent=NOW + timedelta(minutes=minute), outbox=depth), NOW)
    assert problems(state, NOW) == ["outbox growing (2 -> 9)"]
    busy_but_draining = apply_report(state, report(sent=NOW + timedelta(minutes=9), outbox=4), NOW)
    assert problems(busy_but_draining, NOW) == []
    assert problems(healthy, NOW + timedelta(hours=30)) == ["silent for 30.0h"]
    assert "gallery 2.4d old" in problems(healthy, NOW + timedelta(days=2, hours=1))
    from edge_app.match_event import StorageHealth

    full = report(sent=NOW + timedelta(minutes=10)).model_copy(
        update={"storage": StorageHealth(state="full", free_bytes=0, reserve_bytes=10**8)}
    )
    assert problems(apply_report(healthy, full, NOW), NOW) == ["disk full"]
    late = apply_report(healthy, report(sent=NOW - timedelta(minutes=5), cameras={"gate": 0.0}), NOW)
    assert late.cameras == healthy.cameras and late.received == 2, "a late report is counted, not applied"
    assert apply_report(late, report(sent=NOW - timedelta(minutes=5)), NOW) is late, "a duplicate changes nothing"


def test_camera_health_is_the_current_rate_not_a_lifetime_average():
    from edge_app.health import RecentRate
    from edge_app.pipeline.runner import EdgeRunner

    clock = SimpleNamespace(now=1000.0)
    taken = RecentRate(window_s=10.0, clock=lambda: clock.now)
    capture = SimpleNamespace(camera_id="gate", taken=taken, dropped_recent=RecentRate(clock=lambda: clock.now),
                              state=lambda: ("up", time.time(), None))  # fmt: skip
    from edge_app.pipeline.motion import MotionGate, MotionSettings

    processor = SimpleNamespace(motion=MotionGate(MotionSettings()))
    runner = SimpleNamespace(captures={"gate": capture}, _lock=__import__("threading").Lock(), processor=processor)
    for _ in range(150):  # 15 fps for 10 s
        taken.add()
        clock.now += 1 / 15
    first = EdgeRunner.camera_health(runner)["gate"]
    assert first.state == "up" and 13 < first.fps < 17
    clock.now += 15  # unplugged: no frame since
    capture.state = lambda: ("reconnecting", time.time(), "stopped delivering frames")
    second = EdgeRunner.camera_health(runner)["gate"]
    assert (second.fps, second.state, second.error) == (0.0, "reconnecting", "stopped delivering frames")


def publish(settings: dict, topic: str, payload: bytes) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{uuid.uuid4().hex[:8]}")
    client.tls_set(ca_certs=settings["ca"], certfile=settings["cert"], keyfile=settings["key"])
    client.connect(settings["host"], settings["port"])
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_unplugged_camera_shows_as_a_problem_within_two_health_intervals(broker, tmp_path, monkeypatch):
    monkeypatch.setenv("MPD_ALERT_DIR", str(tmp_path))
    monkeypatch.delenv("MPD_DEVICE_TABLE", raising=False)
    backend = broker.client_settings(broker.pki.backend)
    engine = HealthRuleEngine(open_device_store(), backend["host"], backend["port"], backend["ca"], backend["cert"],
                              backend["key"], client_id=f"health-{uuid.uuid4().hex[:6]}")  # fmt: skip
    engine.start()
    site_1, site_2 = broker.client_settings("site-1"), broker.client_settings("site-2")  # each device's own cert
    interval = 1.0
    try:
        publish(site_1, "mpd/site-1/health", report(sent=datetime.now(UTC), interval=interval).to_json().encode())
        publish(site_2, "mpd/site-2/health", report("site-2", datetime.now(UTC), interval=interval).to_json().encode())
        deadline = time.monotonic() + 5
        while engine.taken < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        status = CliRunner().invoke(main, ["fleet", "status"])
        assert status.exit_code == 0 and status.output.count(" ok\n") == 2, status.output

        unplugged = time.monotonic()
        publish(site_1, "mpd/site-1/health", report(sent=datetime.now(UTC), cameras={"gate": 0.0}, interval=interval).to_json().encode())  # fmt: skip
        while True:
            status = CliRunner().invoke(main, ["fleet", "status"])
            if status.exit_code == 1 or time.monotonic() - unplugged > 2 * interval:
                break
            time.sleep(0.05)
    finally:
        engine.stop()
    assert status.exit_code == 1, status.output
    first, second = status.output.strip().splitlines()
    assert first.startswith("site-1") and "PROBLEM camera gate reconnecting" in first and "gate=0fps" in first
    assert second.startswith("site-2") and second.endswith(" ok")


def test_health_lambda_on_moto_keeps_state_rejects_forgeries_and_the_check_counts_problems(aws, monkeypatch, capsys):
    create_device_table("mpd-devices")
    monkeypatch.setenv("MPD_DEVICE_TABLE", "mpd-devices")
    events = [
        rule_event(report("site-1", NOW - timedelta(minutes=10)), received=NOW - timedelta(minutes=10)),
        rule_event(report("site-2", NOW, cameras={"gate": 0.0, "yard": 8.0}, outbox=1)),
        rule_event(report("site-1"), topic="mpd/site-9/health"),  # body claims another device
        {"payload": base64.b64encode(b"{not json").decode(), "topic": "mpd/site-3/health"},
    ]
    # Through a real (moto) queue, as the IoT rule's SQS action and the event source mapping do.
    import boto3

    sqs = boto3.client("sqs")
    queue = sqs.create_queue(QueueName="mpd-health")["QueueUrl"]
    for body in [json.dumps(e) for e in events] + ["not json"]:
        sqs.send_message(QueueUrl=queue, MessageBody=body)
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    batch = {"Records": [{"messageId": m["MessageId"], "body": m["Body"]} for m in received]}
    assert len(batch["Records"]) == 5
    assert handler.health_handler(batch) == {"batchItemFailures": []}
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (metrics["HealthAccepted"], metrics["HealthRejected"]) == (2, 3)
    assert metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "MPD/Fleet"

    store = open_device_store()
    result = handler.check(store, NOW, interval_s=60, stale_after=timedelta(hours=48), published_url=None)
    assert result["counts"] | {} == {
        "Devices": 2, "DevicesWithProblems": 2, "DevicesSilent": 1, "CamerasDown": 1,
        "DevicesOutboxGrowing": 0, "StaleGalleries": 0,
    }  # fmt: skip
    assert result["problems"] == {"site-1": ["silent for 10m"], "site-2": ["camera gate reconnecting"]}


def test_fleet_status_reports_the_published_gallery_age(tmp_path, monkeypatch):
    from edge_app.gallery.bundle import ModelRef
    from edge_app.gallery.pointer import LatestPointer

    monkeypatch.setenv("MPD_ALERT_DIR", str(tmp_path))
    monkeypatch.delenv("MPD_DEVICE_TABLE", raising=False)
    published = tmp_path / "published"
    published.mkdir()
    old = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y%m%dT%H%M%SZ")
    pointer = LatestPointer(gallery_version=old, full=f"{old}/full/", embedder=ModelRef(id="e", sha256="0" * 64),
                            published_at=datetime.now(UTC) - timedelta(days=3))  # fmt: skip
    (published / "latest.json").write_text(pointer.to_json())
    SqliteDeviceStore(tmp_path / "fleet.sqlite3")
    result = CliRunner().invoke(main, ["fleet", "status", "--published", str(published)])
    assert "published (all): 3.0d old  STALE" in result.output and "no device has reported yet" in result.output


@pytest.mark.parametrize("payload", [b"", b"[]", b'{"schema": "mpd.health/1"}', b"x" * 20000])
def test_malformed_health_payloads_are_rejected_with_a_reason(payload):
    event = {"payload": base64.b64encode(payload).decode(), "topic": "mpd/site-1/health"}
    with pytest.raises(handler.Rejected):
        handler.parse(event)
