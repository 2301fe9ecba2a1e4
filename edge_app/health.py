"""Device health on ``mpd/{device_id}/health``: gallery version, current fps and state of
each camera, storage condition, outbox depth (``edge_app.match_event.HealthReport``).

Health is a heartbeat, not evidence: it is published best effort (QoS 1, short wait)
and never queued in the outbox, so a long outage does not fill the outbox with stale
heartbeats. It carries counts only: no face data, no person ids.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from edge_app.match_event import HealthReport, health_topic
from edge_app.publishers import Publisher, PublishError

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0  # "current" fps: counted over the last 10 s, in 1 s buckets


class RecentRate:
    """Counts events in one-second buckets and gives the rate over the last ``window_s`` seconds.

    Cheap enough for every frame (one lock, one integer add); a lifetime average would hide a
    camera that stopped an hour ago."""

    def __init__(self, window_s: float = RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._buckets: dict[int, int] = {}
        self._started = clock()
        self._lock = threading.Lock()

    def add(self, count: int = 1) -> None:
        second = int(self.clock())
        with self._lock:
            self._buckets[second] = self._buckets.get(second, 0) + count
            if len(self._buckets) > self.window_s + 2:
                oldest = second - int(self.window_s) - 1
                for key in [k for k in self._buckets if k < oldest]:
                    del self._buckets[key]

    def _window(self) -> tuple[int, float]:
        """(first bucket in the window, seconds the window covers so far)."""
        now = self.clock()
        first = int(now) - int(self.window_s) + 1
        return first, max(min(now - first, now - self._started), 1e-3)

    def count(self) -> int:
        """Events in the window (the last ``window_s`` one-second buckets, the current one included)."""
        first, _ = self._window()
        with self._lock:
            return sum(n for second, n in self._buckets.items() if second >= first)

    def rate(self) -> float:
        """Events per second over the window (over the time since start while that is shorter)."""
        first, span = self._window()
        with self._lock:
            count = sum(n for second, n in self._buckets.items() if second >= first)
        return count / max(span, 0.5)


class HealthReporter(threading.Thread):
    """Publishes ``make_report()`` every ``interval_s`` seconds (read live, so updates apply)."""

    def __init__(
        self,
        device_id: str,
        publisher: Publisher,
        make_report: Callable[[], HealthReport],
        interval_s,
        file: Path | None = None,
    ) -> None:
        super().__init__(name="health", daemon=True)
        self.topic = health_topic(device_id)
        self.publisher = publisher
        self.make_report = make_report
        self.interval_s = interval_s  # a number, or a callable returning the current interval
        self.file = Path(file) if file is not None else None  # the latest report, for local watchers
        self.sent = 0
        self.failed = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def publish_now(self) -> bool:
        report = self.make_report()
        if self.file is not None:
            # Written whether or not the uplink takes it: it says how the pipeline is doing.
            from edge_app.gallery.bundle import atomic_write_bytes

            try:
                atomic_write_bytes(self.file, report.to_json().encode())
            except OSError as error:
                log.warning("health file %s not written: %s", self.file, error)
        try:
            self.publisher.publish(self.topic, report.to_json(), key=f"health-{uuid.uuid4()}")
        except PublishError as error:
            self.failed += 1
            log.info("health not sent: %s", error)
            return False
        self.sent += 1
        return True

    def run(self) -> None:
        while True:
            interval = self.interval_s() if callable(self.interval_s) else self.interval_s
            if self._stop_event.wait(interval):
                return
            self.publish_now()
