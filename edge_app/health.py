"""Device health on ``mpd/{device_id}/health``: gallery version, fps, outbox depth.

Health is a heartbeat, not evidence: it is published best effort (QoS 1, short wait)
and never queued in the outbox, so a long outage does not fill the outbox with stale
heartbeats. It carries counts only: no face data, no person ids.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from edge_app.match_event import HealthReport, health_topic
from edge_app.publishers import Publisher, PublishError

log = logging.getLogger(__name__)


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
