"""The retained announcement on mpd/gallery/latest through real mosquitto with mutual TLS."""

from __future__ import annotations

import time

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_app.gallery.announcements import AnnouncementListener
from edge_app.gallery.pointer import ANNOUNCE_TOPIC
from edge_app.gallery.sync_agent import SyncAgent
from sync_service.gallery.publish import announce, publish
from tests.gallery_factory import Publisher, churn, synthetic_gallery


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_announcement_wakes_the_agent_and_late_joiners_get_the_retained_one(broker, tmp_path, caplog):
    backend = broker.client_settings(broker.pki.backend)
    device = broker.client_settings(broker.pki.device)
    publisher = Publisher(tmp_path / "cloud")
    first = synthetic_gallery(200, seed=1)
    publisher.release(first)
    agent = SyncAgent(str(publisher.root), tmp_path / "device", publisher.public_key, interval=3600)
    agent.start()
    listener = AnnouncementListener(agent, device["host"], device["port"], device["ca"], device["cert"], device["key"], "dev-1")  # fmt: skip
    try:
        assert wait_for(lambda: agent.version == publisher.previous[0].gallery_version)
        record, _ = publisher.release(churn(first, 0.05), publish_it=False)
        pointer = publish(str(publisher.build_out), str(publisher.root))
        announce(pointer, backend["host"], backend["port"], backend["ca"], backend["cert"], backend["key"])
        # The agent's poll interval is an hour: only the announcement can make this happen.
        assert wait_for(lambda: agent.version == record.gallery_version), agent.last_result

        # Garbage on the topic is logged and ignored; the agent keeps running.
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="junk")
        client.tls_set(ca_certs=backend["ca"], certfile=backend["cert"], keyfile=backend["key"])
        client.connect(backend["host"], backend["port"])
        client.loop_start()
        client.publish(ANNOUNCE_TOPIC, b"\xff not json", qos=1).wait_for_publish(5)
        assert wait_for(lambda: "ignoring announcement" in caplog.text)
        client.publish(ANNOUNCE_TOPIC, pointer.to_json(), qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        assert agent._thread.is_alive() and agent.version == record.gallery_version
    finally:
        listener.close()
        agent.stop()

    # A device that connects later still hears the newest version (retained message).
    late = AnnouncementListener(agent, device["host"], device["port"], device["ca"], device["cert"], device["key"], "dev-2")  # fmt: skip
    try:
        assert wait_for(lambda: late.received >= 1)
    finally:
        late.close()
