"""Wakes the gallery sync agent on the retained ``mpd/gallery/latest`` announcement.

The listener subscribes with the device's IoT Core identity (mutual TLS). paho reconnects
by itself and resubscribes in ``on_connect``; the broker replays the retained
announcement on every subscribe, so a device that was offline hears of the newest
version when it comes back. The payload is only a hint: the agent reads the pointer
from its source and verifies everything it fetches.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edge_app.gallery.pointer import ANNOUNCE_TOPIC
from edge_app.mqtt_tls import mutual_tls_client

if TYPE_CHECKING:
    from edge_app.gallery.sync_agent import SyncAgent


class AnnouncementListener:
    """Subscribes to ``mpd/gallery/latest`` and calls ``agent.announce(payload)`` for each message.

    Raises ``edge_app.mqtt_tls.MqttTlsError`` when the TLS files cannot be loaded."""

    def __init__(
        self,
        agent: SyncAgent,
        host: str,
        port: int,
        ca: str | Path,
        cert: str | Path,
        key: str | Path,
        client_id: str,
        topic: str = ANNOUNCE_TOPIC,  # a regional gallery's own topic (pointer.announce_topic)
    ) -> None:
        self.agent = agent
        self.received = 0
        client = mutual_tls_client(client_id, ca, cert, key, reconnect_delay=(1, 300))
        client.on_connect = lambda c, userdata, flags, rc, props: c.subscribe(topic, qos=1)
        client.on_message = self._on_message
        client.connect_async(host, port, keepalive=120)
        client.loop_start()
        self.client = client

    def _on_message(self, client, userdata, message) -> None:
        self.received += 1
        self.agent.announce(message.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
