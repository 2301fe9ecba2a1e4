"""Per-certificate topic ACLs on the local broker (the IoT Core stand-in), and the device
thing policy they stand in for (issue 13, row 9).

A device certificate's CN is its thing name. Device A must not publish as device B nor read
B's matches and health; devices read only the gallery announcements; the cloud backend reads
every device's matches and health and announces galleries. ``greengrass/device-policy.json``
(the documented thing policy) must allow on IoT Core exactly what the broker allows here.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

POLICY = Path(__file__).resolve().parent.parent / "greengrass" / "device-policy.json"
NOT_AUTHORIZED = 135  # MQTT 5 reason code; over 3.1.1 mosquitto drops the message silently


class Client:
    """One MQTT 5 connection with a certificate: publishes wait for the PUBACK reason code."""

    def __init__(self, broker, cert) -> None:
        settings = broker.client_settings(cert)
        self.received: list[tuple[str, bytes]] = []
        self.acks: dict[int, int] = {}
        self.granted: list[int] = []
        self._acked = threading.Condition()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"acl-{uuid.uuid4().hex[:8]}",
                             protocol=paho.MQTTv5)  # fmt: skip
        client.tls_set(ca_certs=settings["ca"], certfile=settings["cert"], keyfile=settings["key"])
        client.on_message = lambda c, u, message: self.received.append((message.topic, message.payload))
        client.on_publish = self._on_publish
        client.on_subscribe = lambda c, u, mid, codes, props: self.granted.extend(code.value for code in codes)
        connected = threading.Event()
        client.on_connect = lambda c, u, flags, code, props: connected.set()
        client.connect(settings["host"], settings["port"])
        client.loop_start()
        assert connected.wait(5), "no CONNACK"
        self.client = client

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._acked:
            self.acks[mid] = reason_code.value
            self._acked.notify_all()

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int:
        """The PUBACK reason code: 0 accepted, 135 not authorised."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, timeout=5), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, *filters: str) -> None:
        expected = len(self.granted) + len(filters)
        self.client.subscribe([(f, 1) for f in filters])
        deadline = time.monotonic() + 5
        while len(self.granted) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.granted) >= expected, "no SUBACK"

    def topics(self) -> list[str]:
        return [topic for topic, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def clients(broker):
    opened: list[Client] = []

    def connect(cert) -> Client:
        opened.append(Client(broker, cert))
        return opened[-1]

    yield connect
    for client in opened:
        client.close()


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_device_a_cannot_publish_as_device_b(broker, clients):
    backend = clients(broker.pki.backend)
    backend.subscribe("mpd/+/match", "mpd/+/health")
    site_a = clients("site-a")

    assert site_a.publish("mpd/site-b/match", b'{"forged": true}') == NOT_AUTHORIZED
    assert site_a.publish("mpd/site-b/health") == NOT_AUTHORIZED
    assert site_a.publish("mpd/site-a/match", b'{"own": true}') == 0
    assert wait_for(lambda: "mpd/site-a/match" in backend.topics())
    time.sleep(0.2)
    assert backend.topics() == ["mpd/site-a/match"]  # the forgeries never reached the cloud


def test_device_a_cannot_read_device_b(broker, clients):
    backend = clients(broker.pki.backend)
    backend.subscribe("mpd/+/match", "mpd/+/health")
    site_a = clients("site-a")
    site_a.subscribe("mpd/site-b/match", "mpd/+/match", "mpd/+/health", "mpd/#", "#")
    site_b = clients("site-b")

    assert site_b.publish("mpd/site-b/match", b'{"case_id": "MP1"}') == 0
    assert site_b.publish("mpd/site-b/health") == 0
    assert wait_for(lambda: len(backend.received) == 2)  # delivered to the cloud ...
    time.sleep(0.3)
    assert site_a.received == []  # ... and to no other device


def test_devices_read_gallery_announcements_but_cannot_make_them(broker, clients):
    backend = clients(broker.pki.backend)
    site_a, site_b = clients("site-a"), clients("site-b")
    site_b.subscribe("mpd/gallery/latest", "mpd/gallery/+/latest")

    assert site_a.publish("mpd/gallery/latest", b'{"gallery_version": "forged"}') == NOT_AUTHORIZED
    assert site_a.publish("mpd/gallery/texas/latest", b'{"gallery_version": "forged"}') == NOT_AUTHORIZED
    assert backend.publish("mpd/gallery/latest", b'{"gallery_version": "v2"}') == 0
    assert backend.publish("mpd/gallery/texas/latest", b'{"gallery_version": "v3"}') == 0
    assert wait_for(lambda: len(site_b.received) == 2)
    time.sleep(0.2)
    assert sorted(site_b.received) == [
        ("mpd/gallery/latest", b'{"gallery_version": "v2"}'),
        ("mpd/gallery/texas/latest", b'{"gallery_version": "v3"}'),
    ]
    # The backend cannot speak for a device either.
    assert backend.publish("mpd/site-a/match") == NOT_AUTHORIZED


# --- the documented policy ---------------------------------------------------------------------


def policy_allows(policy: dict, action: str, resource: str, thing: str) -> bool:
    """IoT policy evaluation for Allow statements: ``*`` in a resource matches any characters."""
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] != "Allow" or action not in actions:
            continue
        for pattern in resources:
            pattern = pattern.replace("${iot:Connection.Thing.ThingName}", thing)
            pattern = pattern.replace("arn:aws:iot:REGION:ACCOUNT:", "")
            if fnmatch.fnmatchcase(resource, pattern.replace("[", "[[]")):
                return True
    return False


def test_the_thing_policy_narrows_all_four_iot_actions():
    policy = json.loads(POLICY.read_text())
    iot_actions = set()
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        for action in actions:
            assert action != "iot:*" and "*" not in action.split(":")[0]
            if action.startswith("iot:"):
                iot_actions.add(action)
                assert "*" not in resources and not any(r.endswith(":*") for r in resources), statement["Sid"]
    assert {"iot:Connect", "iot:Publish", "iot:Subscribe", "iot:Receive"} <= iot_actions
    assert policy_allows(policy, "iot:Connect", "client/site-a", "site-a")
    assert not policy_allows(policy, "iot:Connect", "client/site-b", "site-a")
    assert not policy_allows(policy, "iot:Subscribe", "topicfilter/mpd/#", "site-a")
    assert not policy_allows(policy, "iot:Subscribe", "topicfilter/mpd/+/match", "site-a")
    assert not policy_allows(policy, "iot:Subscribe", "topicfilter/#", "site-a")
    assert policy_allows(policy, "iot:Subscribe", "topicfilter/mpd/gallery/latest", "site-a")


PROBES = [
    ("iot:Publish", "mpd/site-a/match"),
    ("iot:Publish", "mpd/site-a/health"),
    ("iot:Publish", "mpd/site-a/other"),
    ("iot:Publish", "mpd/site-b/match"),
    ("iot:Publish", "mpd/site-b/health"),
    ("iot:Publish", "mpd/gallery/latest"),
    ("iot:Publish", "mpd/gallery/texas/latest"),
    ("iot:Receive", "mpd/site-b/match"),
    ("iot:Receive", "mpd/site-b/health"),
    ("iot:Receive", "mpd/site-a/match"),
    ("iot:Receive", "mpd/gallery/latest"),
    ("iot:Receive", "mpd/gallery/texas/latest"),
]


def test_the_local_broker_allows_device_a_exactly_what_the_thing_policy_allows(broker, clients):
    policy = json.loads(POLICY.read_text())
    backend = clients(broker.pki.backend)
    backend.subscribe("mpd/+/match", "mpd/+/health")
    site_a = clients("site-a")
    site_a.subscribe(*{topic for action, topic in PROBES if action == "iot:Receive"})
    publishers = {"site-a": site_a, "site-b": clients("site-b"), "gallery": backend}

    broker_allows = {}
    for action, topic in PROBES:
        if action == "iot:Publish":
            broker_allows[(action, topic)] = site_a.publish(topic) == 0
        else:
            sender = publishers[topic.split("/")[1] if not topic.startswith("mpd/gallery/") else "gallery"]
            assert sender.publish(topic, f"probe {topic}".encode()) == 0
    time.sleep(0.5)
    for action, topic in PROBES:
        if action == "iot:Receive":
            broker_allows[(action, topic)] = topic in site_a.topics()
    documented = {(a, t): policy_allows(policy, a, f"topic/{t}", "site-a") for a, t in PROBES}
    assert broker_allows == documented
    assert documented[("iot:Publish", "mpd/site-a/match")] and not documented[("iot:Publish", "mpd/site-b/match")]
