"""Publishers against real servers: mosquitto with mutual TLS stands in for IoT Core.

The Greengrass publisher is tested with a fake IPC client: no Greengrass nucleus runs
here (it is on no reachable registry), so this is the one place a fake is allowed.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.outbox import Outbox, OutboxSender
from edge_app.publishers import PublishError
from edge_app.publishers.greengrass import GreengrassPublisher
from edge_app.publishers.local import FilePublisher, StdoutPublisher
from edge_app.publishers.mqtt import MqttPublisher
from tests.servers import Mosquitto


class Subscriber:
    """The cloud side: a client with the backend certificate collecting what arrives."""

    def __init__(self, broker: Mosquitto, topic: str, client_id: str = "backend", clean: bool = True) -> None:
        self.messages: list[dict] = []
        self.subscribed = threading.Event()
        self.topic = topic
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        pki = broker.pki
        client.tls_set(ca_certs=str(pki.ca), certfile=str(pki.backend.cert), keyfile=str(pki.backend.key))
        client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)
        client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        client.on_message = lambda c, u, msg: self.messages.append(json.loads(msg.payload))
        client.connect_async(broker.host, broker.port)
        client.loop_start()
        self.client = client
        assert self.subscribed.wait(10), "subscriber could not subscribe"

    def wait_for(self, count: int, timeout: float = 20) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.messages

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publisher(broker: Mosquitto, cert=None, client_id: str = "test-thing", ack_timeout_s: float = 5) -> MqttPublisher:
    s = broker.client_settings(cert)
    return MqttPublisher(
        s["host"], s["port"], s["ca"], s["cert"], s["key"], client_id=client_id, ack_timeout_s=ack_timeout_s
    )


def test_mqtt_publish_returns_after_puback_and_the_message_arrives(broker):
    subscriber = Subscriber(broker, "mpd/test-thing/match")
    publisher = _publisher(broker)
    try:
        assert publisher.wait_connected(10), publisher.last_error
        event_id = str(uuid.uuid4())
        publisher.publish("mpd/test-thing/match", json.dumps({"event_id": event_id}), key=event_id)
        assert [m["event_id"] for m in subscriber.wait_for(1)] == [event_id]
    finally:
        publisher.close()
        subscriber.close()


def test_mqtt_client_certificate_from_another_ca_is_refused(broker):
    publisher = _publisher(broker, cert=broker.pki.rogue_device, client_id="rogue")
    try:
        assert not publisher.wait_connected(3), "a certificate from another CA must not connect"
        with pytest.raises(PublishError, match="mqtt 127.0.0.1"):
            publisher.publish("mpd/test-thing/match", "{}", key="x")
    finally:
        publisher.close()
    assert "certificate verify failed" in broker.log.read_text()


def test_mqtt_publish_fails_clearly_while_the_broker_is_down(broker):
    publisher = _publisher(broker)
    try:
        assert publisher.wait_connected(10)
        broker.stop()
        deadline = time.monotonic() + 10
        while publisher.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(PublishError, match="mqtt 127.0.0.1"):
            publisher.publish("mpd/test-thing/match", "{}", key="y")
    finally:
        publisher.close()


def test_mqtt_missing_tls_files_are_named():
    with pytest.raises(PublishError, match="cannot load TLS files"):
        MqttPublisher("127.0.0.1", 1, "/nonexistent/ca.crt", "/nonexistent/c.crt", "/nonexistent/c.key", "x")


@pytest.fixture()
def persistent_broker(pki, tmp_path):
    """A broker that keeps sessions across restarts (IoT Core keeps persistent sessions too),
    so the subscriber's queue survives the outage and no message can slip past it."""
    broker = Mosquitto(pki, tmp_path)
    broker.config.write_text(
        broker.config.read_text().replace("persistence false", f"persistence true\npersistence_location {tmp_path}/")
    )
    broker.start()
    yield broker
    broker.stop()


def test_broker_outage_then_back_delivers_every_event_exactly_once(persistent_broker, tmp_path):
    broker = persistent_broker
    topic = "mpd/test-thing/match"
    subscriber = Subscriber(broker, topic, client_id="backend-persistent", clean=False)
    outbox = Outbox(tmp_path / "outbox.db")
    publisher = _publisher(broker, ack_timeout_s=2)
    sender = OutboxSender(outbox, publisher, backoff_initial_s=0.2, backoff_max_s=1.0)
    sender.start()
    ids = []

    def put(n: int) -> None:
        event_id = str(uuid.uuid4())
        ids.append(event_id)
        outbox.put(event_id, topic, json.dumps({"event_id": event_id, "n": n}))

    try:
        assert publisher.wait_connected(10)
        for n in range(3):
            put(n)
        assert sender.drain(10)
        broker.stop()  # uplink down: events keep coming and wait in the outbox
        for n in range(3, 10):
            put(n)
            time.sleep(0.1)
        time.sleep(1.5)
        assert outbox.depth() == 7, "nothing is marked sent while the broker is down"
        assert sender.failures > 0
        broker.start()
        assert sender.drain(30), f"outbox still holds {outbox.depth()} events"
        received = [m["event_id"] for m in subscriber.wait_for(10)]
        time.sleep(0.5)  # a late duplicate would show up here
        received = [m["event_id"] for m in subscriber.messages]
        assert sorted(received) == sorted(ids)
        assert len(received) == len(set(received)) == 10
    finally:
        sender.stop()
        publisher.close()
        subscriber.close()


class FakeGreengrassIpc:
    """Stands in for GreengrassCoreIPCClientV2 (no nucleus can run here): records calls,
    and fails while ``down`` the way the nucleus does (ServiceError) or never answers."""

    def __init__(self) -> None:
        self.published: list[tuple[str, str, bytes]] = []
        self.mode = "up"

    def publish_to_iot_core_async(self, *, topic_name, qos, payload):
        from awsiot.greengrasscoreipc.model import ServiceError

        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.mode == "error":
            future.set_exception(ServiceError(message="Message spool is full"))
        elif self.mode == "up":
            self.published.append((topic_name, qos, payload))
            future.set_result(None)
        return future  # "hang": never completes


def test_greengrass_publishes_qos1_to_iot_core_and_maps_failures():
    from awsiot.greengrasscoreipc.model import QOS

    ipc = FakeGreengrassIpc()
    publisher = GreengrassPublisher(ipc_client=ipc, timeout_s=0.2)
    publisher.publish("mpd/dev/match", '{"a": 1}', key="k")
    assert ipc.published == [("mpd/dev/match", QOS.AT_LEAST_ONCE, b'{"a": 1}')]
    ipc.mode = "error"
    with pytest.raises(PublishError, match="spool is full"):
        publisher.publish("mpd/dev/match", "{}", key="k2")
    ipc.mode = "hang"
    with pytest.raises(PublishError, match="no answer from the nucleus"):
        publisher.publish("mpd/dev/match", "{}", key="k3")


def test_greengrass_outside_a_nucleus_says_so(monkeypatch):
    monkeypatch.delenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", raising=False)
    with pytest.raises(PublishError, match="not running inside a Greengrass v2 component"):
        GreengrassPublisher()


def test_stdout_and_file_publishers_write_one_json_line_per_message(tmp_path):
    stream = io.StringIO()
    StdoutPublisher(stream).publish("mpd/d/match", '{"event_id": "e1"}', key="e1")
    assert json.loads(stream.getvalue()) == {"topic": "mpd/d/match", "message": {"event_id": "e1"}}
    sink = tmp_path / "events.jsonl"
    publisher = FilePublisher(sink)
    publisher.publish("t", '{"n": 1}', key="a")
    publisher.publish("t", '{"n": 2}', key="b")
    assert [json.loads(line)["message"]["n"] for line in sink.read_text().splitlines()] == [1, 2]
    with pytest.raises(PublishError, match="file"):
        FilePublisher(tmp_path / "no" / "such" / "dir.jsonl").publish("t", "{}", key="c")
