"""Where per-device state lives: a DynamoDB table in AWS, SQLite on one machine.

Both keep one JSON document per device and write it with optimistic concurrency (the
report count the writer read), so two workers folding reports of one device at once never
lose one: the loser reads again and retries.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from sync_service.fleet.state import DeviceState

TTL_DAYS = 90  # a device not heard of for this long leaves the table


class Conflict(RuntimeError):
    """Another writer updated the device first."""


class DeviceStore(Protocol):
    def get(self, device_id: str) -> DeviceState | None: ...

    def put(self, state: DeviceState, expected_reports: int | None) -> None:
        """Write ``state`` if the stored one still has ``expected_reports`` (None: absent)."""

    def all(self) -> Iterator[DeviceState]: ...


def update(store: DeviceStore, device_id: str, change: Callable[[DeviceState | None], DeviceState]) -> DeviceState:
    """Read, change, write; retried on a concurrent write."""
    for _ in range(20):
        current = store.get(device_id)
        new = change(current)
        if current is not None and new is current:
            return current  # nothing to write (an old report)
        try:
            store.put(new, current.reports if current else None)
            return new
        except Conflict:
            time.sleep(0.01)
    raise RuntimeError(f"device {device_id}: state kept changing under 20 attempts")


class SqliteDeviceStore:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS devices (device_id TEXT PRIMARY KEY, reports INTEGER, state TEXT)")

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            self._local.db = db
        return db

    def get(self, device_id: str) -> DeviceState | None:
        row = self._connect().execute("SELECT state FROM devices WHERE device_id = ?", (device_id,)).fetchone()
        return DeviceState.model_validate_json(row[0]) if row else None

    def put(self, state: DeviceState, expected_reports: int | None) -> None:
        db = self._connect()
        if expected_reports is None:
            cursor = db.execute(
                "INSERT OR IGNORE INTO devices VALUES (?, ?, ?)",
                (state.device_id, state.reports, state.model_dump_json()),
            )
        else:
            cursor = db.execute(
                "UPDATE devices SET reports = ?, state = ? WHERE device_id = ? AND reports = ?",
                (state.reports, state.model_dump_json(), state.device_id, expected_reports),
            )
        if cursor.rowcount != 1:
            raise Conflict(state.device_id)

    def all(self) -> Iterator[DeviceState]:
        for (text,) in self._connect().execute("SELECT state FROM devices ORDER BY device_id").fetchall():
            yield DeviceState.model_validate_json(text)


class DynamoDeviceStore:
    def __init__(self, table: str, client: Any = None) -> None:
        import boto3

        self.table = table
        self.client = client or boto3.client("dynamodb")

    def get(self, device_id: str) -> DeviceState | None:
        item = self.client.get_item(TableName=self.table, Key={"device_id": {"S": device_id}}, ConsistentRead=True)
        item = item.get("Item")
        return DeviceState.model_validate_json(item["state"]["S"]) if item else None

    def put(self, state: DeviceState, expected_reports: int | None) -> None:
        item = {
            "device_id": {"S": state.device_id},
            "reports": {"N": str(state.reports)},
            "state": {"S": state.model_dump_json()},
            "expires_at": {"N": str(int(state.last_seen.timestamp()) + TTL_DAYS * 86400)},
        }
        if expected_reports is None:
            condition, values = "attribute_not_exists(device_id)", None
        else:
            condition, values = "reports = :seen", {":seen": {"N": str(expected_reports)}}
        kwargs = {"TableName": self.table, "Item": item, "ConditionExpression": condition}
        if values:
            kwargs["ExpressionAttributeValues"] = values
        try:
            self.client.put_item(**kwargs)
        except self.client.exceptions.ConditionalCheckFailedException:
            raise Conflict(state.device_id) from None

    def all(self) -> Iterator[DeviceState]:
        for page in self.client.get_paginator("scan").paginate(TableName=self.table):
            for item in page.get("Items", []):
                yield DeviceState.model_validate_json(item["state"]["S"])


def create_device_table(table: str, client: Any = None) -> None:
    """For moto: the table template.yaml creates in AWS."""
    import boto3

    client = client or boto3.client("dynamodb")
    if table in client.list_tables()["TableNames"]:
        return
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table)


def open_device_store(env: dict[str, str] | None = None) -> DeviceStore:
    """DynamoDB when ``$MPD_DEVICE_TABLE`` is set, else SQLite under ``$MPD_ALERT_DIR`` (default .mpd/cloud)."""
    env = os.environ if env is None else env
    if env.get("MPD_DEVICE_TABLE"):
        return DynamoDeviceStore(env["MPD_DEVICE_TABLE"])
    return SqliteDeviceStore(Path(env.get("MPD_ALERT_DIR", ".mpd/cloud")) / "fleet.sqlite3")


def dumps(state: DeviceState) -> str:
    return json.dumps(state.model_dump(mode="json"))
