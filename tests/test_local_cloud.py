"""The alert path on one machine, end to end: a device publishes a match event to
mosquitto (mutual TLS, the IoT Core stand-in); the local rule engine (``mpd cloud
serve``) applies the rule and runs the handler against moto, or against the
embedded SQLite tables and SMS file when no AWS endpoint is configured."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from click.testing import CliRunner

from edge_app.match_event import HealthReport
from sync_service.alerts.cli import cloud_group
from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import build_service
from sync_service.alerts.local import LocalRuleEngine, MqttSettings, create_aws_resources
from sync_service.alerts.stores import read_sms_sink
from tests.servers import free_port
from tests.test_alert_handler import PHONE, SEEN_TEXT, SITES, gallery_root, make_event, namus  # noqa: F401  (fixtures)

MPD = str(Path(sys.executable).parent / "mpd")


def publish(broker, topic: str, payload: bytes, cert=None, retain: bool = False) -> None:
    """One QoS 1 publish from a device (by default the one the topic names, with its own
    certificate: the broker lets a device publish only on its own topics), waiting for the PUBACK."""
    settings = broker.client_settings(cert or topic.split("/")[1])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{uuid.uuid4().hex[:8]}")
    client.tls_set(ca_certs=settings["ca"], certfile=settings["cert"], keyfile=settings["key"])
    client.connect(settings["host"], settings["port"])
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(timeout=5)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def backend_settings(broker) -> MqttSettings:
    s = broker.client_settings(broker.pki.backend)
    return MqttSettings(s["host"], s["port"], s["ca"], s["cert"], s["key"], client_id=f"rule-{uuid.uuid4().hex[:8]}")


@pytest.fixture()
def engine_on_moto(broker, aws, namus):  # noqa: F811
    namus.mode = "ok"
    settings = AlertSettings(
        backend="aws", phone_numbers=(PHONE,), sites=SITES, source_urls={"namus": namus.url}, case_lookup_timeout=0.5
    )
    create_aws_resources(settings)
    decisions: list[dict] = []
    engine = LocalRuleEngine(build_service(settings), backend_settings(broker), on_decision=decisions.append)
    engine.start()
    yield engine, decisions
    engine.stop()


def test_device_publish_becomes_one_sms_in_moto(broker, aws, engine_on_moto):  # noqa: F811
    engine, decisions = engine_on_moto
    event = make_event()
    topic = f"mpd/{event.device_id}/match"

    publish(broker, topic, event.to_json().encode())
    assert wait_for(lambda: len(aws.sent_sms()) == 1, timeout=10)
    # Re-delivered, malformed, and off-rule messages: none of them texts again.
    publish(broker, topic, event.to_json().encode())
    publish(broker, topic, b"{not json")
    publish(broker, f"mpd/{event.device_id}/health", HealthReport(device_id=event.device_id).to_json().encode())
    assert wait_for(lambda: len(decisions) == 3, timeout=10)
    time.sleep(0.3)  # a wrongly fired rule for the health message would show up here

    # Handled on a worker pool: the decisions may complete in any order.
    assert sorted(d["decision"] for d in decisions) == ["duplicate", "rejected", "sent"]
    (sms,) = aws.sent_sms()
    assert sms["phone_number"] == PHONE
    assert sms["message"].startswith("MISSING PERSON SEEN: Dana Example (F, 41 now, 35 when missing), NamUs MP990001.")


def test_local_rule_engine_survives_a_broker_restart(broker, aws, engine_on_moto):  # noqa: F811
    engine, decisions = engine_on_moto
    broker.stop()
    assert wait_for(lambda: not engine.subscribed, timeout=10)
    broker.start()
    # paho reconnects (first retry after about a second) and the engine subscribes again.
    assert engine.wait_subscribed(timeout=15)
    event = make_event()
    publish(broker, f"mpd/{event.device_id}/match", event.to_json().encode())
    assert wait_for(lambda: len(aws.sent_sms()) == 1, timeout=10)


def test_rogue_certificate_is_refused_with_a_clear_error(broker, tmp_path):
    s = broker.client_settings(broker.pki.rogue_device)
    settings = MqttSettings(s["host"], s["port"], s["ca"], s["cert"], s["key"], client_id="rogue-rule")
    service = build_service(AlertSettings(backend="local", local_dir=tmp_path), fetch=None)
    engine = LocalRuleEngine(service, settings)
    with pytest.raises(ConnectionError, match="no subscription"):
        engine.start(timeout=3)


def _serve(broker, env: dict[str, str], client_id: str) -> subprocess.Popen:
    s = broker.client_settings(broker.pki.backend)
    command = [MPD, "cloud", "serve", "--mqtt-host", s["host"], "--mqtt-port", str(s["port"]),
               "--ca", s["ca"], "--cert", s["cert"], "--key", s["key"], "--client-id", client_id,
               "--review-port", "0"]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    page = process.stderr.readline()  # "review page at http://...", then "listening on ..." once subscribed
    assert page.startswith("review page at http://127.0.0.1:"), page + (process.stderr.read() if process.poll() else "")
    process.review_url = page.split()[3]
    line = process.stderr.readline()
    while line and "listening on mpd/+/match" not in line:  # the fleet's own line comes first
        line = process.stderr.readline()
    assert "listening on mpd/+/match" in line, line + (process.stderr.read() if process.poll() is not None else "")
    return process


def _stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == 0, out
    return out


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MPD_"))}
    return env | {
        "MPD_ALERT_PHONE_NUMBERS": PHONE,
        "MPD_SITES": SITES.model_dump_json(),
        "MPD_ALERT_DIR": str(tmp_path),
    }


def test_mpd_cloud_serve_against_moto(broker, aws, tmp_path, gallery_root):  # noqa: F811
    env = _base_env(tmp_path) | {
        "MPD_GALLERY_URL": str(gallery_root),
        "AWS_ENDPOINT_URL": aws.url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    process = _serve(broker, env, client_id=f"serve-{uuid.uuid4().hex[:8]}")
    try:
        event = make_event()
        publish(broker, f"mpd/{event.device_id}/match", event.to_json().encode())
        assert wait_for(lambda: len(aws.sent_sms()) == 1, timeout=10)
    finally:
        out = _stop(process)
    assert '"decision": "sent"' in out
    listed = subprocess.run([MPD, "cloud", "sms"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert json.loads(line)["message"].startswith("MISSING PERSON SEEN: Dana Example, NamUs MP990001.")
    assert not list(tmp_path.iterdir())  # nothing written locally in AWS mode


def test_mpd_cloud_serve_with_no_cloud_writes_the_sms_file(broker, tmp_path):
    env = _base_env(tmp_path)
    process = _serve(broker, env, client_id=f"serve-{uuid.uuid4().hex[:8]}")
    try:
        event = make_event()
        for _ in range(3):  # the device's outbox re-sending: still one SMS
            publish(broker, f"mpd/{event.device_id}/match", event.to_json().encode())
        sink = tmp_path / "sms.jsonl"
        assert wait_for(lambda: len(read_sms_sink(sink)) >= 1, timeout=10)
        time.sleep(0.5)
    finally:
        out = _stop(process)
    (sms,) = read_sms_sink(sink)
    assert sms["phone_number"] == PHONE and f"Seen {SEEN_TEXT} at Gate camera, North trailhead." in sms["message"]
    assert out.count('"decision": "duplicate"') == 2
    listed = subprocess.run([MPD, "cloud", "sms"], env=env, capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["message_id"] for line in listed.stdout.splitlines()] == [sms["message_id"]]


def test_mpd_cloud_serve_names_what_is_down(broker, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    env = _base_env(tmp_path) | {"AWS_ENDPOINT_URL": dead, "AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t",
                                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1"}  # fmt: skip
    s = broker.client_settings(broker.pki.backend)
    base = [MPD, "cloud", "serve", "--ca", s["ca"], "--cert", s["cert"], "--key", s["key"], "--review-port", "0"]
    no_aws = subprocess.run([*base, "--mqtt-port", str(s["port"])], env=env, capture_output=True, text=True, timeout=60)
    assert no_aws.returncode == 1 and f"cannot create the alert tables at {dead}" in no_aws.stderr

    no_broker = subprocess.run(
        [*base, "--mqtt-port", str(free_port())], env=_base_env(tmp_path), capture_output=True, text=True, timeout=60
    )
    assert no_broker.returncode == 1 and "unreachable" in no_broker.stderr


def test_retained_messages_replayed_on_subscribe_do_not_fire_the_rule(broker, aws, namus):  # noqa: F811
    stale = make_event(device_id="dev-retain")
    publish(broker, "mpd/dev-retain/match", stale.to_json().encode(), retain=True)
    settings = AlertSettings(backend="aws", phone_numbers=(PHONE,), sites=SITES)
    create_aws_resources(settings)
    decisions: list[dict] = []
    engine = LocalRuleEngine(
        build_service(settings, fetch=None), backend_settings(broker), on_decision=decisions.append
    )
    engine.start()
    try:
        fresh = make_event(device_id="dev-retain")
        publish(broker, "mpd/dev-retain/match", fresh.to_json().encode())
        assert wait_for(lambda: len(decisions) >= 1, timeout=10)
        time.sleep(0.3)
    finally:
        engine.stop()
        publish(broker, "mpd/dev-retain/match", b"", retain=True)  # clear the retained message
    assert [d["event_id"] for d in decisions] == [str(fresh.event_id)]


def test_an_event_failing_every_attempt_is_parked_and_replays_to_one_sms(broker, aws, tmp_path, monkeypatch):  # noqa: F811
    settings = AlertSettings(backend="aws", phone_numbers=(PHONE,), sites=SITES)
    create_aws_resources(settings)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{free_port()}")  # SNS down throughout
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    parked = tmp_path / "failed-events.jsonl"
    decisions: list[dict] = []
    engine = LocalRuleEngine(
        build_service(settings, fetch=None),
        backend_settings(broker),
        retry_wait=0.01,
        on_decision=decisions.append,
        dead_letter=parked,
    )
    engine.start()
    try:
        event = make_event()
        publish(broker, f"mpd/{event.device_id}/match", event.to_json().encode())
        assert wait_for(lambda: len(decisions) == 1, timeout=20)
    finally:
        engine.stop()
    assert decisions[0]["decision"] == "error" and aws.sent_sms() == []
    (line,) = parked.read_text().splitlines()
    replay = json.loads(line)["event"]

    assert json.loads(base64.b64decode(replay["payload"]))["event_id"] == str(event.event_id)

    # SNS is back: the operator replays what was parked, twice by mistake; one SMS.
    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS")
    monkeypatch.setenv("MPD_ALERT_DIR", str(tmp_path))
    monkeypatch.setenv("MPD_ALERT_PHONE_NUMBERS", PHONE)
    monkeypatch.setenv("MPD_SITES", SITES.model_dump_json())
    parked.write_text(line + "\n" + line + "\n" + "{half a line\n")
    result = CliRunner().invoke(cloud_group, ["replay"])
    assert result.exit_code == 1 and "1 event(s) still parked" in result.output
    assert [json.loads(out)["decision"] for out in result.stdout.splitlines()] == ["sent", "duplicate"]
    assert len(aws.sent_sms()) == 1
    assert parked.read_text() == "{half a line\n"
