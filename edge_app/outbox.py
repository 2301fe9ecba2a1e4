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
- **A full disk never loses the event in hand nor stops the device.** A reserve file
  (``reserve_bytes``, allocated beside the database) is given back to the filesystem the
  first time a write fails for lack of space, and the write is tried again. If the disk is
  still full, the event is held in memory (at most ``max_in_memory``, oldest dropped and
  counted past that), offered to the sender like any other, and written as soon as space
  returns. ``storage()`` reports the condition for health.
- **Private.** The database, its WAL and shared-memory files are created 0600 (SQLite
  gives its side files the database's mode) and a directory the outbox creates is 0700.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections import OrderedDict
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


DEFAULT_RESERVE_BYTES = 16 * 1024 * 1024  # about 1,500 match events with crops
DEFAULT_MAX_IN_MEMORY = 1000
SIDE_FILES = ("-wal", "-shm", "-journal")


class OutboxError(Exception):
    """The outbox file cannot be opened or is not an outbox."""


class StorageFull(OutboxError):
    """A write failed for lack of space (or another storage error); the cause is kept."""


def _storage_error(error: BaseException) -> bool:
    """A write failed because of the storage (full disk, I/O error, a locked or damaged file),
    not because of the event: the event is kept in memory rather than lost with the frame loop."""
    return isinstance(error, OSError | sqlite3.OperationalError | sqlite3.DatabaseError)


@dataclass(frozen=True)
class StorageState:
    state: str  # "ok" | "low" | "full"
    free_bytes: int
    reserve_bytes: int
    events_in_memory: int
    events_lost: int
    error: str | None


@dataclass(frozen=True)
class OutboxItem:
    event_id: str
    topic: str
    payload: str
    attempts: int
    created_at: float


class Outbox:
    """SQLite-backed queue of events to send. Safe to use from several threads."""

    def __init__(
        self,
        path: Path,
        max_events: int = 10_000,
        *,
        reserve_bytes: int = DEFAULT_RESERVE_BYTES,
        max_in_memory: int = DEFAULT_MAX_IN_MEMORY,
    ) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path.with_name(self.path.name + ".reserve")
        self.max_in_memory = max_in_memory
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._held: OrderedDict[str, OutboxItem] = OrderedDict()  # events the disk could not take
        self._sent_unmarked: set[str] = set()  # sent, but marking them on disk failed
        self.events_lost = 0
        self.storage_error: str | None = None  # set while the last write to disk failed
        self._db: sqlite3.Connection | None = None
        self._next_open = 0.0
        try:
            _private_directory(self.path.parent)
            self._open_db()
        except StorageFull as error:
            # A device restarted on a full disk still runs: events wait in memory until it opens.
            self.storage_error = str(error)[:300]
            log.error("outbox: cannot open on disk, holding events in memory until it can: %s", error)
        except OSError as error:
            raise OutboxError(f"outbox {self.path}: {error.strerror or error}") from None
        self._ensure_reserve()

    def _open_db(self) -> None:
        """Open (creating) the database; StorageFull for a full or failing disk, OutboxError for a
        file that is not an outbox."""
        db = None
        try:
            _private_file(self.path)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # fsync the WAL on every commit
            db.executescript(SCHEMA)
            for suffix in SIDE_FILES:  # files an older version left with the umask's mode
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    os.chmod(side, 0o600)
        except (sqlite3.Error, OSError) as error:
            if db is not None:
                db.close()
            code = getattr(error, "sqlite_errorcode", 0) & 0xFF
            full = isinstance(error, OSError) and error.errno == errno.ENOSPC
            if full or code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN):
                raise StorageFull(self._storage_message(error)) from error
            if isinstance(error, OSError):
                raise
            raise OutboxError(f"outbox {self.path}: {error}") from None
        self._db = db

    def _storage_message(self, error: BaseException) -> str:
        free = _free_bytes(self.path.parent)
        condition = "disk full" if free < 64 * 1024 else "storage error"
        return f"{condition}: outbox {self.path}: {error} ({free} bytes free)"

    def _db_ready_locked(self) -> bool:
        """The database is open, or could be opened now (tried at most every 2 s)."""
        if self._db is not None:
            return True
        if time.monotonic() < self._next_open:
            return False
        self._next_open = time.monotonic() + 2.0
        try:
            self._open_db()
        except (StorageFull, OutboxError, OSError) as error:
            self.storage_error = str(error)[:300]
            return False
        log.warning("outbox: opened %s", self.path)
        return True

    def put(self, event_id: str, topic: str, payload: str) -> bool:
        """Commit one event; returns False if that event id is already in the outbox.

        Never raises for a full disk: the event is then held in memory (see the module doc)."""
        with self._lock:
            if event_id in self._held:
                return False
            self._flush_held_locked()
            try:
                inserted = self._write_locked(event_id, topic, payload)
                self.storage_error = None
            except StorageFull as error:
                self._hold_locked(OutboxItem(event_id, topic, payload, 0, time.time()), error)
                inserted = True
            self._added.notify_all()
        return bool(inserted)

    def retry_held(self) -> int:
        """Try again to write the events held in memory; returns how many are still held."""
        with self._lock:
            self._flush_held_locked()
            return len(self._held)

    def storage(self) -> StorageState:
        """The disk's condition for health: ``full`` while events are held in memory, ``low``
        once the reserve has been given up (or free space is below it), else ``ok``."""
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = 0
        with self._lock:
            held, error = len(self._held), self.storage_error
        if held or error:
            state = "full"
        elif (self.reserve_bytes and not self.reserve_path.exists()) or free < self.reserve_bytes:
            state = "low"
        else:
            state = "ok"
        if state == "ok":
            error = None
        return StorageState(state, free, self.reserve_bytes, held, self.events_lost, error)

    # --- writing, with the reserve and the memory fallback ------------------------------

    def _write_locked(self, event_id: str, topic: str, payload: str, created_at: float | None = None) -> int:
        """Insert one event; on a storage error give up the reserve once and try again.
        Raises StorageFull (naming the first cause) when the disk still cannot take it."""
        try:
            return self._insert_locked(event_id, topic, payload, created_at)
        except StorageFull as first:
            if not self._release_reserve():
                raise
            log.error("outbox: disk full (%s); released the %d-byte reserve and retrying", first, self.reserve_bytes)
            try:
                return self._insert_locked(event_id, topic, payload, created_at)
            except StorageFull as second:
                raise StorageFull(f"{second} (after releasing the reserve)") from second

    def _insert_locked(self, event_id: str, topic: str, payload: str, created_at: float | None) -> int:
        if not self._db_ready_locked():
            raise StorageFull(self.storage_error or f"outbox {self.path}: not open")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO events (event_id, topic, payload, created_at) VALUES (?, ?, ?, ?)",
                (event_id, topic, payload, created_at or time.time()),
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
        except (sqlite3.Error, OSError) as error:
            self._rollback_quietly()
            if _storage_error(error):
                raise StorageFull(self._storage_message(error)) from error
            raise
        except BaseException:
            self._rollback_quietly()
            raise
        return inserted

    def _rollback_quietly(self) -> None:
        # SQLite may already have rolled back (it does on SQLITE_FULL); a second error here
        # must not replace the one that says what went wrong.
        try:
            if self._db is not None and self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error as error:
            log.debug("outbox: rollback after a failed write: %s", error)

    def _hold_locked(self, item: OutboxItem, error: StorageFull) -> None:
        if not self._held:
            log.error("outbox: cannot write to disk, holding events in memory: %s", error)
        self.storage_error = str(error)[:300]
        self._held[item.event_id] = item
        while len(self._held) > self.max_in_memory:
            dropped, _ = self._held.popitem(last=False)
            self.events_lost += 1
            log.error("outbox: disk still full and %d events in memory: dropped %s", self.max_in_memory, dropped)

    def _flush_held_locked(self) -> None:
        for event_id in list(self._sent_unmarked):
            try:
                self._mark_sent_locked(event_id)
                self._sent_unmarked.discard(event_id)
            except (sqlite3.Error, OSError):
                return
        while self._held:
            item = next(iter(self._held.values()))
            try:
                self._insert_locked(item.event_id, item.topic, item.payload, item.created_at)
            except StorageFull:
                return
            del self._held[item.event_id]
            if not self._held:
                log.warning("outbox: disk writable again; events held in memory are on disk")
                self.storage_error = None
        if self.storage_error and self._db_ready_locked() and _free_bytes(self.path.parent) > 1024 * 1024:
            self.storage_error = None  # nothing waiting, and the disk has room again
        self._ensure_reserve()

    def _ensure_reserve(self) -> None:
        """(Re)create the reserve file when there is room for it and something to spare."""
        if not self.reserve_bytes or self.reserve_path.exists():
            return
        try:
            if shutil.disk_usage(self.path.parent).free < 2 * self.reserve_bytes:
                return
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)  # real blocks, not a sparse file
            finally:
                os.close(fd)
        except OSError as error:
            self.reserve_path.unlink(missing_ok=True)
            if error.errno not in (errno.ENOSPC, errno.EEXIST):
                log.warning("outbox: cannot allocate the reserve %s: %s", self.reserve_path, error)

    def _release_reserve(self) -> bool:
        try:
            self.reserve_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def pending(self, limit: int = 50) -> list[OutboxItem]:
        """Unsent events, oldest first: those on disk, then those held in memory."""
        with self._lock:
            rows = self._query_locked(
                "SELECT event_id, topic, payload, attempts, created_at FROM events "
                "WHERE sent_at IS NULL ORDER BY seq LIMIT ?",
                (limit + len(self._sent_unmarked),),
            )
            items = [OutboxItem(*row) for row in rows if row[0] not in self._sent_unmarked][:limit]
            return items + list(self._held.values())[: max(0, limit - len(items))]

    def wait_for_pending(self, timeout: float) -> bool:
        """Block until there is an unsent event or ``timeout`` passes."""
        with self._added:
            if self._depth_locked():
                return True
            self._added.wait(timeout)
            return self._depth_locked() > 0

    def mark_sent(self, event_id: str) -> None:
        with self._lock:
            if self._held.pop(event_id, None) is not None:
                return  # never reached the disk: nothing to mark
            try:
                self._mark_sent_locked(event_id)
            except (sqlite3.Error, OSError) as error:
                # Delivered; remember it so it is not offered again, and mark it when the disk allows.
                self._rollback_quietly()
                self._sent_unmarked.add(event_id)
                log.error("outbox: %s was sent but cannot be marked on disk yet: %s", event_id, error)

    def _mark_sent_locked(self, event_id: str) -> None:
        if self._db is None:
            raise sqlite3.OperationalError("outbox not open")
        self._db.execute("UPDATE events SET sent_at = ? WHERE event_id = ?", (time.time(), event_id))
        self._db.execute(
            "DELETE FROM events WHERE sent_at IS NOT NULL AND seq <= "
            "(SELECT seq FROM events WHERE sent_at IS NOT NULL ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (KEEP_SENT,),
        )

    def record_failure(self, event_id: str, error: str) -> None:
        with self._lock:
            if event_id in self._held or self._db is None:
                return
            try:
                self._db.execute(
                    "UPDATE events SET attempts = attempts + 1, last_error = ? WHERE event_id = ?",
                    (error[:500], event_id),
                )
            except (sqlite3.Error, OSError) as failure:  # bookkeeping only: a full disk must not stop sending
                self._rollback_quietly()
                log.debug("outbox: cannot record the failure of %s: %s", event_id, failure)

    def depth(self) -> int:
        """Unsent events, on disk and held in memory."""
        with self._lock:
            return self._depth_locked()

    def stats(self) -> dict[str, int]:
        with self._lock:
            sent = self._query_locked("SELECT COUNT(*) FROM events WHERE sent_at IS NOT NULL", (), [(0,)])[0][0]
            evicted = self._query_locked("SELECT value FROM counters WHERE name = 'evicted'", (), [])
            evicted = evicted[0] if evicted else None
            return {
                "pending": self._depth_locked(),
                "sent_kept": sent,
                "evicted": evicted[0] if evicted else 0,
                "in_memory": len(self._held),
                "lost": self.events_lost,
            }

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()

    def _depth_locked(self) -> int:
        on_disk = self._query_locked("SELECT COUNT(*) FROM events WHERE sent_at IS NULL", (), [(0,)])[0][0]
        return on_disk - len(self._sent_unmarked) + len(self._held)

    def _query_locked(self, sql: str, params: tuple, default: list | None = None) -> list:
        """Rows of a read; ``default`` (if given) when the database is not open or cannot be read."""
        if self._db is None:
            return default if default is not None else []
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError:
            if default is None:
                raise
            return default

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
            self.outbox.retry_held()  # a full disk may have room again
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


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _private_directory(directory: Path) -> None:
    """Create the outbox's directory 0700 (with any missing parents); an existing one is left
    as the operator made it, but a world-writable one is refused (files could be swapped)."""
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        return
    mode = directory.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise OutboxError(f"directory {directory} is writable by everyone: use a private one (0700)")


def _private_file(path: Path) -> None:
    """The database file 0600 before SQLite opens it (its WAL and shm files copy that mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    except FileExistsError:
        if path.is_symlink():
            raise OutboxError(f"outbox {path} is a symbolic link; give the real path") from None
    os.chmod(path, 0o600)
