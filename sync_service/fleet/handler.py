"""Fleet health in the cloud: take heartbeats in, judge the fleet, emit metrics.

- ``take_in``: rule events (``mpd/+/health``, payload base64 as for matches) -> validated
  ``HealthReport`` -> per-device state. The topic is the authenticated identity: a body
  claiming another device is rejected. Malformed input is logged with its reason and
  dropped (retrying cannot fix it); a store failure is reported for a retry.
- ``check``: every device's problems and the published galleries' age, as CloudWatch
  metrics in embedded metric format (one JSON line on stdout; no PutMetricData calls).
  Fleet-level counts only: a metric per device would cost more than the devices.

``health_handler`` (SQS batch from the IoT rule) and ``check_handler`` (every 5 minutes)
are the Lambda entry points; ``mpd cloud serve`` calls ``take_in`` in-process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from edge_app.match_event import HealthReport
from sync_service.alerts.rule import RuleEvent, topic_matches
from sync_service.fleet.state import HEALTH_TOPIC_FILTER, DeviceState, apply_report, problems, version_age
from sync_service.fleet.stores import DeviceStore, open_device_store, update

log = logging.getLogger(__name__)
logging.getLogger().setLevel(os.environ.get("MPD_LOG_LEVEL", "INFO"))

NAMESPACE = "MPD/Fleet"
MAX_HEALTH_BYTES = 16 * 1024


class Rejected(ValueError):
    """A health message that cannot be taken in (the reason says why)."""


def parse(event: dict) -> HealthReport:
    try:
        envelope = RuleEvent.model_validate(event)
        payload = envelope.payload_bytes()
    except (ValidationError, ValueError) as error:
        raise Rejected(f"not a rule event: {error}") from None
    if not topic_matches(HEALTH_TOPIC_FILTER, envelope.topic):
        raise Rejected(f"topic {envelope.topic!r} is not {HEALTH_TOPIC_FILTER}")
    if len(payload) > MAX_HEALTH_BYTES:
        raise Rejected(f"payload is {len(payload)} bytes, more than {MAX_HEALTH_BYTES}")
    try:
        report = HealthReport.model_validate_json(payload)
    except ValidationError as error:
        raise Rejected(f"not a health report: {error.errors()[0]['msg']} at {error.errors()[0]['loc']}") from None
    if report.device_id != envelope.topic.split("/")[1]:
        raise Rejected(f"body claims device {report.device_id!r} on {envelope.topic!r}")
    return report


def received_at(event: dict) -> datetime:
    millis = event.get("received_ms")
    return datetime.fromtimestamp(millis / 1000, UTC) if isinstance(millis, int | float) else datetime.now(UTC)


def take_in(store: DeviceStore, events: list[dict]) -> dict[str, Any]:
    """Fold rule events into device state. Returns counts and the indexes whose write failed."""
    accepted, rejected, failed = 0, 0, []
    started = time.perf_counter()
    for index, event in enumerate(events):
        try:
            report = parse(event)
        except Rejected as error:
            rejected += 1
            log.warning("rejected health message on %s: %s", str(event.get("topic"))[:200], error)
            continue
        arrived = received_at(event)
        try:
            update(store, report.device_id, lambda state, r=report, t=arrived: apply_report(state, r, t))
            accepted += 1
        except Exception:
            log.exception("device state of %s not written; will be retried", report.device_id)
            failed.append(index)
    return {"accepted": accepted, "rejected": rejected, "failed": failed, "seconds": time.perf_counter() - started}


def emf(metrics: dict[str, float], unit: str = "Count", properties: dict | None = None) -> str:
    """One CloudWatch embedded-metric-format record (no dimensions: fleet-wide figures)."""
    record = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {"Namespace": NAMESPACE, "Dimensions": [[]], "Metrics": [{"Name": n, "Unit": unit} for n in metrics]}
            ],
        },
        **metrics,
        **(properties or {}),
    }
    return json.dumps(record, default=str)


def health_handler(event: dict, context: Any = None) -> dict:
    """SQS batch of rule events; failed writes come back for a retry (ReportBatchItemFailures)."""
    records = event.get("Records") or []
    events, ids, unreadable = [], [], 0
    for record in records:
        try:
            events.append(json.loads(record["body"]))
            ids.append(record["messageId"])
        except (KeyError, TypeError, json.JSONDecodeError):
            unreadable += 1
            log.warning("rejected health message: SQS body is not JSON")
    result = take_in(open_device_store(), events)
    print(emf({"HealthAccepted": result["accepted"], "HealthRejected": result["rejected"] + unreadable}))
    return {"batchItemFailures": [{"itemIdentifier": ids[i]} for i in result["failed"]]}


# --- the fleet's view ------------------------------------------------------------------------


def published_ages(published_url: str | None, now: datetime) -> dict[str, timedelta]:
    """Age of every scope's live gallery (from its latest.json), by scope root."""
    if not published_url:
        return {}
    from edge_app.gallery.pointer import POINTER, LatestPointer
    from sync_service.store import open_store

    store = open_store(published_url)
    ages = {}
    roots = [""] + sorted({k[: -len(POINTER)] for k in store.list_keys("scopes/") if k.endswith("/" + POINTER)})
    for root in roots:
        data = store.read_bytes(root + POINTER)
        if data is None:
            continue
        pointer = LatestPointer.parse(data, f"{published_url}/{root}{POINTER}")
        ages[root or "(all)"] = version_age(pointer.gallery_version, now) or (now - pointer.published_at)
    return ages


def fleet_view(
    store: DeviceStore, now: datetime, *, interval_s: float, stale_after: timedelta
) -> list[tuple[DeviceState, list[str]]]:
    """Every device with its problems, devices with problems first."""
    rows = [
        (state, problems(state, now, default_interval_s=interval_s, stale_after=stale_after)) for state in store.all()
    ]
    return sorted(rows, key=lambda row: (not row[1], row[0].device_id))


def check(
    store: DeviceStore, now: datetime, *, interval_s: float, stale_after: timedelta, published_url: str | None
) -> dict:
    """The fleet's problem counts (what the alarms watch)."""
    rows = fleet_view(store, now, interval_s=interval_s, stale_after=stale_after)
    galleries = published_ages(published_url, now)
    stale_published = [root for root, age in galleries.items() if age > stale_after]
    counts = {
        "Devices": len(rows),
        "DevicesWithProblems": sum(1 for _, found in rows if found),
        "DevicesSilent": sum(1 for _, found in rows if any(p.startswith("silent") for p in found)),
        "CamerasDown": sum(1 for _, found in rows for p in found if p.startswith("camera")),
        "DevicesOutboxGrowing": sum(1 for _, found in rows if any(p.startswith("outbox") for p in found)),
        "StaleGalleries": len(stale_published) + sum(1 for _, f in rows if any(p.startswith("gallery") for p in f)),
    }
    oldest = max(galleries.values(), default=None)
    if oldest is not None:
        counts["GalleryAgeHours"] = round(oldest.total_seconds() / 3600, 2)
    return {"counts": counts, "stale_published": stale_published, "problems": {s.device_id: f for s, f in rows if f}}


def check_handler(event: dict, context: Any = None) -> dict:
    now = datetime.now(UTC)
    result = check(
        open_device_store(),
        now,
        interval_s=float(os.environ.get("MPD_HEALTH_INTERVAL_S", "60")),
        stale_after=timedelta(hours=float(os.environ.get("MPD_STALE_GALLERY_HOURS", "48"))),
        published_url=os.environ.get("MPD_PUBLISHED_URL"),
    )
    problems_sample = dict(list(result["problems"].items())[:50])  # searchable in Logs Insights, not metrics
    print(emf(result["counts"], properties={"problems": problems_sample}), file=sys.stdout, flush=True)
    return result["counts"]
