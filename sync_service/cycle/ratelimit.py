"""One polite request rate shared by every worker of a source (threads, processes, Lambdas).

Each worker's ``PoliteClient`` takes its request slots from a shared limiter instead of its
own, so N workers together never start requests closer than ``1/rate`` apart. A slot is
reserved with one atomic compare-and-set on the next free slot time: a DynamoDB
conditional update in AWS, a file under ``flock`` on one machine. Nobody polls: a worker
reserves the next slot and sleeps until it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class FileRateLimiter:
    """Slots shared by every process on this machine that uses the same file."""

    def __init__(self, path: str | os.PathLike[str], rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit must be positive, got {rate}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.interval = 1.0 / rate

    def reserve(self) -> float:
        """Reserve the next free slot; returns its wall-clock time."""
        with open(self.path, "a+") as handle:  # one open per call: flock works between threads too
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            text = handle.read().strip()
            now = time.time()
            slot = max(now, float(text) if text else 0.0)
            handle.seek(0)
            handle.truncate()
            handle.write(repr(slot + self.interval))
            handle.flush()
            return slot

    def wait(self) -> float:
        """Block until this caller may start a request; returns the start (monotonic), like ``RateLimiter``."""
        delay = self.reserve() - time.time()
        if delay > 0:
            time.sleep(delay)
        return time.monotonic()


class DynamoRateLimiter:
    """Slots shared by every Lambda of a source, kept in one DynamoDB item per source.

    Compare-and-set: read the next free slot, then claim it with a conditional update that
    only succeeds if nobody moved it meanwhile; on a clash, read again. Lambda clocks are
    NTP-synchronised to a few milliseconds, far below a 1 s slot.
    """

    def __init__(self, table: str, key: str, rate: float, client: Any = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit must be positive, got {rate}")
        import boto3

        self.table, self.key, self.interval = table, key, 1.0 / rate
        self.client = client or boto3.client("dynamodb")

    def reserve(self) -> float:
        for attempt in range(50):
            item = self.client.get_item(TableName=self.table, Key={"limiter": {"S": self.key}}, ConsistentRead=True)
            seen = item.get("Item", {}).get("next_slot", {}).get("N")
            now = time.time()
            slot = max(now, float(seen) if seen is not None else 0.0)
            condition = "attribute_not_exists(next_slot)" if seen is None else "next_slot = :seen"
            values = {":next": {"N": str(Decimal(repr(slot + self.interval)))}}
            if seen is not None:
                values[":seen"] = {"N": seen}
            try:
                self.client.update_item(
                    TableName=self.table,
                    Key={"limiter": {"S": self.key}},
                    UpdateExpression="SET next_slot = :next",
                    ConditionExpression=condition,
                    ExpressionAttributeValues=values,
                )
                return slot
            except self.client.exceptions.ConditionalCheckFailedException:
                time.sleep(random.uniform(0, 0.02 * (attempt + 1)))  # another worker took it: read again
        raise RuntimeError(f"rate limiter {self.table}/{self.key}: no slot after 50 attempts")

    def wait(self) -> float:
        delay = self.reserve() - time.time()
        if delay > 0:
            time.sleep(delay)
        return time.monotonic()


def shared_limiter(source: str, rate: float, local_dir: str | os.PathLike[str] | None = None):
    """The limiter for ``source``: DynamoDB when ``$MPD_RATE_LIMIT_TABLE`` is set, else a file."""
    table = os.environ.get("MPD_RATE_LIMIT_TABLE")
    if table:
        return DynamoRateLimiter(table, f"source:{source}", rate)
    folder = Path(local_dir or os.environ.get("MPD_CYCLE_STATE_DIR", ".mpd/cycle"))
    return FileRateLimiter(folder / f"rate-{source}.slot", rate)
