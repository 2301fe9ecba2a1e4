"""The durable outbox: a confirmed event is committed to SQLite before any send.

- **Durable.** WAL journal with ``synchronous=FULL``: once ``put`` returns, the event
  survives ``kill -9`` and power loss (SQLite commits are atomic).
- **At-least-once.** The sender marks an event sent only after the publisher reports
  the broker's acknowledgement (PUBACK). A crash between the ack and the mark re-sends
  it after restart with the same ``event_id``; the cloud drops duplicates by that id.
  Once marked, an event is never sent again.
- **Backoff.** While the uplink is down the sender retries the oldest event with
  exponential backoff and full jitter (tenacity), so a fleet coming back online does
  not reconnect in lock-step.
- **Bounded** to ``max_events`` unsent events. Policy when full: the *oldest* unsent
  event is dropped and counted (``evicted`` in stats and health). The newest sighting
  says where a person is now, which is what a responder acts on; the cooldown keeps the
  rate low (at most one event per person per camera per cooldown), so filling 10,000
  slots takes a very long outage.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tenacity import RetryError, Retrying, retry_if_exception_type, stop_when_event_set, wait_random_exponential

from edge_app.publishers import Publisher, PublishError

log = logging.getLogger(__name__)

# Sent rows are kept for a while for inspection, then pruned.
KEEP_SENT = 1000

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS events_unsent ON events (sent_at, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(Exception):
    """The outbox file cannot be opened or is not an outbox."""


@dataclass(frozen=True)
class OutboxItem:
    event_id: str
    topic: str
    payload: str
    attempts: int
    created_at: float


class Outbox:
    """SQLite-backed queue of events to send. Safe to use from several threads."""

    def __init__(self, path: Path, max_events: int = 10_000) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise OutboxError(f"outbox {self.path}: {error}") from None

    def put(self, event_id: str, topic: str, payload: str) -> bool:
        """Commit one event; returns False if that event id is already in the outbox."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                inserted = self._db.execute(
                    "INSERT OR IGNORE INTO events (event_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                    (event_id, topic, payload, time.time()),
                ).rowcount
                overflow = self._depth_locked() - self.max_events
                if overflow > 0:
                    self._db.execute(
                        "DELETE FROM events WHERE seq IN "
                        "(SELECT seq FROM events WHERE sent_at IS NULL ORDER BY seq LIMIT ?)",
                        (overflow,),
                    )
                    self._bump_locked("evicted", overflow)
                    log.warning("outbox full (%d events): dropped the %d oldest unsent", self.max_events, overflow)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._added.notify_all()
        return bool(inserted)

    def pending(self, limit: int = 50) -> list[OutboxItem]:
        """Unsent events, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT event_id, topic, payload, attempts, created_at FROM events "
                "WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            ).fetchall()
        return [OutboxItem(*row) for row in rows]

    def wait_for_pending(self, timeout: float) -> bool:
        """Block until there is an unsent event or ``timeout`` passes."""
        with self._added:
            if self._depth_locked():
                return True
            self._added.wait(timeout)
            return self._depth_locked() > 0

    def mark_sent(self, event_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE events SET sent_at = ? WHERE event_id = ?", (time.time(), event_id))
            self._db.execute(
                "DELETE FROM events WHERE sent_at IS NOT NULL AND seq <= "
                "(SELECT seq FROM events WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (KEEP_SENT,),
            )

    def record_failure(self, event_id: str, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE events SET attempts = attempts + 1, last_error = ? WHERE event_id = ?", (error[:500], event_id)
            )

    def depth(self) -> int:
        with self._lock:
            return self._depth_locked()

    def stats(self) -> dict[str, int]:
        with self._lock:
            sent = self._db.execute("SELECT COUNT(*) FROM events WHERE sent_at IS NOT NULL").fetchone()[0]
            evicted = self._db.execute("SELECT value FROM counters WHERE name = 'evicted'").fetchone()
            return {"pending": self._depth_locked(), "sent_kept": sent, "evicted": evicted[0] if evicted else 0}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _depth_locked(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM events WHERE sent_at IS NULL").fetchone()[0]

    def _bump_locked(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, by, by),
        )


class OutboxSender(threading.Thread):
    """Sends unsent events oldest first through a publisher, backing off while it fails."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: Publisher,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        on_sent: Callable[[OutboxItem], None] | None = None,
    ) -> None:
        super().__init__(name="outbox-sender", daemon=True)
        self.outbox = outbox
        self.publisher = publisher
        self.on_sent = on_sent
        self.sent = 0
        self.failures = 0
        self._stop_event = threading.Event()
        self._retrying = Retrying(
            retry=retry_if_exception_type(PublishError),
            wait=wait_random_exponential(multiplier=backoff_initial_s, max=backoff_max_s),
            stop=stop_when_event_set(self._stop_event),
            sleep=self._stop_event.wait,  # a stop request ends the wait at once
            before_sleep=self._note_failure,
            reraise=True,
        )
        self._current: OutboxItem | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop_event.set()
        with self.outbox._added:
            self.outbox._added.notify_all()
        self.join(timeout)

    def drain(self, timeout: float) -> bool:
        """Wait until the outbox is empty (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.05)
        return self.outbox.depth() == 0

    def run(self) -> None:
        while not self._stop_event.is_set():
            if not self.outbox.wait_for_pending(timeout=0.5):
                continue
            for item in self.outbox.pending(limit=50):
                if self._stop_event.is_set():
                    return
                self._current = item
                try:
                    self._retrying(self.publisher.publish, item.topic, item.payload, item.event_id)
                except (PublishError, RetryError):
                    return  # only reached when stopping
                self.outbox.mark_sent(item.event_id)
                self.sent += 1
                if self.on_sent is not None:
                    self.on_sent(item)

    def _note_failure(self, retry_state) -> None:
        self.failures += 1
        error = retry_state.outcome.exception()
        if self._current is not None:
            self.outbox.record_failure(self._current.event_id, str(error))
        log.warning(
            "publish of %s failed (%s); retry in %.1f s",
            self._current.event_id if self._current else "?",
            error,
            retry_state.upcoming_sleep,
        )
