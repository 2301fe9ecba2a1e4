"""The alert path on one machine: mosquitto in place of IoT Core's rule engine.

``LocalRuleEngine`` subscribes to the rule's topic filter with mutual TLS, turns each
message into the event the IoT rule would send, and calls the same ``AlertService``
in-process, retrying a failed invocation twice like Lambda's asynchronous invoke.
``create_aws_resources`` makes the tables (and nothing else) in a moto server.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from tenacity import Retrying, stop_after_attempt, wait_exponential

from edge_app.mqtt_tls import mutual_tls_client
from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import AlertService, LocalContext
from sync_service.alerts.rule import LocalRule
from sync_service.alerts.stores import AUDIT, COOLDOWN, IDEMPOTENCY, TableSpec

log = logging.getLogger(__name__)

# Lambda retries a failed asynchronous invocation twice.
INVOKE_ATTEMPTS = 3


@dataclass(frozen=True)
class MqttSettings:
    host: str
    port: int
    ca: str
    cert: str
    key: str
    client_id: str = "mpd-cloud-rule"


class LocalRuleEngine:
    def __init__(
        self,
        service: AlertService,
        mqtt_settings: MqttSettings,
        *,
        rule: LocalRule | None = None,
        workers: int = 4,
        retry_wait: float = 1.0,
        on_decision: Callable[[dict[str, Any]], None] | None = None,
        dead_letter: Path | None = None,
    ) -> None:
        self.service = service
        self.mqtt = mqtt_settings
        self.rule = rule or LocalRule.parse()
        self.on_decision = on_decision
        self.retry_wait = retry_wait
        # Where events that failed every attempt are kept (AlertFailureQueue in AWS).
        self.dead_letter = dead_letter
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alert-invoke")
        self._subscribed = threading.Event()
        # A persistent session: the broker queues QoS 1 messages while we are away.
        self.client = mutual_tls_client(
            mqtt_settings.client_id,
            mqtt_settings.ca,
            mqtt_settings.cert,
            mqtt_settings.key,
            clean_session=False,
            # The broker is local: back within seconds of its return (an IoT rule never misses a beat).
            reconnect_delay=(1, 5),
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; raises ``ConnectionError`` when the broker is not reachable."""
        try:
            self.client.connect(self.mqtt.host, self.mqtt.port, keepalive=30)
        except OSError as error:
            raise ConnectionError(f"MQTT broker {self.mqtt.host}:{self.mqtt.port} unreachable: {error}") from None
        self.client.loop_start()
        if not self.wait_subscribed(timeout):
            self.stop()
            raise ConnectionError(
                f"no subscription on {self.mqtt.host}:{self.mqtt.port} after {timeout}s (TLS refused? see broker log)"
            )
        log.info("local rule engine listening on %s", self.rule.topic_filter)

    def stop(self) -> None:
        self.client.on_disconnect = None
        self.client.disconnect()
        self.client.loop_stop()
        self._pool.shutdown(wait=True)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("MQTT connection refused: %s", reason_code)
            return
        client.subscribe(self.rule.topic_filter, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        if all(not code.is_failure for code in reason_codes):
            self._subscribed.set()
        else:
            log.error("subscription to %s refused: %s", self.rule.topic_filter, reason_codes)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self._subscribed.clear()
        log.warning("MQTT connection lost (%s); paho reconnects", reason_code)

    def wait_subscribed(self, timeout: float) -> bool:
        """Whether the engine is (again) subscribed within ``timeout`` seconds."""
        return self._subscribed.wait(timeout)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.retain:
            # A retained copy replayed on subscribe: IoT rules fire on publishes, not on replays.
            return
        event = self.rule.event_for(message.topic, message.payload)
        if event is not None:
            # Hand off: the network loop must keep reading while SMS go out.
            self._pool.submit(self._invoke, event)

    def _invoke(self, event: dict[str, Any]) -> None:
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(INVOKE_ATTEMPTS),
                wait=wait_exponential(multiplier=self.retry_wait, max=30),
                reraise=True,
            ):
                with attempt:
                    started = time.perf_counter()
                    result = self.service.handle(event, LocalContext())
                    # The handler's own time (one invocation), for `mpd cloud serve` output and benchmarks.
                    result = {**result, "handler_ms": round((time.perf_counter() - started) * 1000, 2)}
        except Exception as error:
            log.exception("alert handler failed %d times", INVOKE_ATTEMPTS)
            result = {"decision": "error", "error": repr(error)[:300]}
            if self.dead_letter is not None:
                self._park(event, result["error"])
        if self.on_decision is not None:
            self.on_decision(result)

    def _park(self, event: dict[str, Any], error: str) -> None:
        self.dead_letter.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "error": error, "failed_at": time.time()}) + "\n"
        with open(self.dead_letter, "a") as queue:
            fcntl.flock(queue, fcntl.LOCK_EX)
            queue.write(line)
            queue.flush()
            os.fsync(queue.fileno())
        log.error("event parked in %s for a later replay", self.dead_letter)


def create_aws_resources(settings: AlertSettings, client: Any = None) -> None:
    """Create the alert and review tables (with TTL) and the crop bucket if missing: for
    moto, as template.yaml does in AWS."""
    import boto3

    from sync_service.review.records import create_review_tables

    client = client or boto3.client("dynamodb")
    create_review_tables(client, settings.review_table, settings.review_audit_table)
    if settings.crop_bucket:
        s3 = boto3.client("s3")
        if settings.crop_bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=settings.crop_bucket)
    if settings.mail_from:
        boto3.client("ses").verify_email_identity(EmailAddress=settings.mail_from)
    existing = set(client.list_tables()["TableNames"])
    for name, spec in (
        (settings.idempotency_table, IDEMPOTENCY),
        (settings.cooldown_table, COOLDOWN),
        (settings.audit_table, AUDIT),
    ):
        if name in existing:
            continue
        _create_table(client, name, spec)


def _create_table(client: Any, name: str, spec: TableSpec) -> None:
    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": spec.key, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": spec.key, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=name)
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute}
    )
