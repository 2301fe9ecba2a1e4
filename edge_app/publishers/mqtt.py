"""MQTT over mutual TLS with paho-mqtt 2.x: how a device talks to AWS IoT Core directly.

QoS 1; ``publish`` returns only after the broker's PUBACK. paho's network thread
reconnects on its own (1 s doubling to 60 s). While disconnected ``publish`` fails at
once instead of queueing inside paho, so the durable outbox stays the only queue. A
message that was handed to paho but not yet acknowledged is remembered by its key
(event id) and waited on again rather than published a second time.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from edge_app.mqtt_tls import MqttTlsError, mutual_tls_client
from edge_app.publishers import PublishError

if TYPE_CHECKING:
    from edge_app.config import EdgeConfig

log = logging.getLogger(__name__)


class MqttPublisher:
    name = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        ca: Path,
        cert: Path,
        key: Path,
        client_id: str,
        keepalive_s: int = 60,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self.address = f"{host}:{port}"
        self.ack_timeout_s = ack_timeout_s
        self.connected = threading.Event()
        self.last_error = "not connected yet"
        self._inflight: dict[str, paho.MQTTMessageInfo] = {}
        self._lock = threading.Lock()
        try:
            # Server certificate and hostname are verified; our certificate proves who we are.
            client = mutual_tls_client(client_id, ca, cert, key, reconnect_delay=(1, 60))
        except MqttTlsError as error:
            raise PublishError(str(error)) from None
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        client.connect_async(host, port, keepalive=keepalive_s)
        client.loop_start()

    @classmethod
    def from_config(cls, config: EdgeConfig) -> MqttPublisher:
        m = config.mqtt
        return cls(m.host, m.port, m.ca, m.cert, m.key, m.client_id or config.device_id, m.keepalive_s, m.ack_timeout_s)

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def publish(self, topic: str, payload: str, key: str) -> None:
        with self._lock:
            info = self._inflight.get(key)
            if info is None:
                if not self.connected.is_set():
                    raise PublishError(f"mqtt {self.address}: {self.last_error}")
                info = self._client.publish(topic, payload.encode(), qos=1)
                if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                    raise PublishError(f"mqtt {self.address}: publish refused: {paho.error_string(info.rc)}")
                self._inflight[key] = info
        try:
            info.wait_for_publish(self.ack_timeout_s)
        except (RuntimeError, ValueError) as error:
            if not self.connected.is_set():
                raise PublishError(f"mqtt {self.address}: {self.last_error}") from None
            raise PublishError(f"mqtt {self.address}: {error}") from None
        if not info.is_published():
            raise PublishError(f"mqtt {self.address}: no PUBACK within {self.ack_timeout_s} s ({self.last_error})")
        with self._lock:
            self._inflight.pop(key, None)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.warning("mqtt %s: %s", self.address, self.last_error)
            return
        self.last_error = "connected"
        self.connected.set()
        log.info("mqtt %s: connected", self.address)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        self.last_error = f"disconnected: {reason_code}"
        if was_connected:
            log.warning("mqtt %s: %s; reconnecting", self.address, self.last_error)

    def _on_connect_fail(self, client, userdata) -> None:
        self.connected.clear()
        self.last_error = "cannot connect (broker down, unreachable, or TLS refused)"
        log.debug("mqtt %s: %s", self.address, self.last_error)
