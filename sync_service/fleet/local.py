"""Fleet health on one machine: mosquitto in place of the IoT rule and its queue.

``HealthRuleEngine`` subscribes to ``mpd/+/health`` with mutual TLS (persistent session,
QoS 1), turns each message into the event the IoT rule would queue, and folds batches of
them into the device store with the same ``take_in`` as the Lambda, about once a second
(the queue's batching window) or every 100 messages.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from edge_app.mqtt_tls import mutual_tls_client
from sync_service.alerts.rule import LocalRule
from sync_service.fleet.handler import take_in
from sync_service.fleet.state import HEALTH_RULE_SQL
from sync_service.fleet.stores import DeviceStore

log = logging.getLogger(__name__)

BATCH = 100
BATCH_WINDOW_S = 1.0


class HealthRuleEngine:
    def __init__(
        self,
        store: DeviceStore,
        host: str,
        port: int,
        ca: str,
        cert: str,
        key: str,
        client_id: str = "mpd-cloud-health",
        on_batch: Callable[[dict], None] | None = None,
    ) -> None:
        self.store = store
        self.rule = LocalRule.parse(HEALTH_RULE_SQL)
        self.host, self.port = host, port
        self.on_batch = on_batch
        self.queue: queue.Queue[dict] = queue.Queue()
        self.taken = 0
        self._subscribed = threading.Event()
        self._stop = threading.Event()
        self.client = mutual_tls_client(client_id, ca, cert, key, clean_session=False, reconnect_delay=(1, 30))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: self._subscribed.clear()
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self._worker = threading.Thread(target=self._drain, name="health-batches", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as error:
            raise ConnectionError(f"MQTT broker {self.host}:{self.port} unreachable: {error}") from None
        self.client.loop_start()
        self._worker.start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise ConnectionError(f"no subscription to {self.rule.topic_filter} at {self.host}:{self.port}")

    def stop(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if not reason_code.is_failure:
            client.subscribe(self.rule.topic_filter, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.retain:
            return  # rules fire on publishes, not on retained replays
        event = self.rule.event_for(message.topic, message.payload)
        if event is not None:
            self.queue.put(event)

    def _drain(self) -> None:
        while not (self._stop.is_set() and self.queue.empty()):
            batch = []
            try:
                batch.append(self.queue.get(timeout=BATCH_WINDOW_S))
                while len(batch) < BATCH:
                    batch.append(self.queue.get(timeout=0.05))
            except queue.Empty:
                pass
            if not batch:
                continue
            result = take_in(self.store, batch)
            for index in result["failed"]:  # retried, as SQS redelivers a failed batch item
                self.queue.put(batch[index])
            self.taken += result["accepted"] + result["rejected"]
            if self.on_batch:
                self.on_batch(result)
