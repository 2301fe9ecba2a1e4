"""Per-device state from health messages, and the one rule for what counts as a problem.

The health function (AWS) and ``mpd cloud serve`` (one machine) fold every heartbeat into a
``DeviceState``; the fleet check (alarms) and ``mpd fleet status`` judge it with
``problems``, so the alarm and the operator's screen never disagree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from edge_app.match_event import HealthReport

HEALTH_TOPIC_FILTER = "mpd/+/health"
HEALTH_RULE_SQL = (
    f"SELECT encode(*, 'base64') AS payload, topic() AS topic, timestamp() AS received_ms FROM '{HEALTH_TOPIC_FILTER}'"
)
OUTBOX_HISTORY = 6  # depths kept per device, to tell a growing outbox from a busy one
SILENCE_GRACE = timedelta(seconds=60)  # on top of two intervals (a late report, a slow link)
DEFAULT_INTERVAL_S = 60.0
VERSION = re.compile(r"^\d{8}T\d{6}Z$")


class CameraState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fps: float = 0.0
    state: str = "up"  # edge_app.match_event.CameraHealth: up, reconnecting, down


class DeviceState(BaseModel):
    """What the cloud knows about one device (DynamoDB item / SQLite row, as JSON)."""

    model_config = ConfigDict(extra="forbid")

    device_id: str
    last_seen: datetime  # when the cloud received the newest report
    sent_at: datetime  # the device's clock on that report
    gallery_version: str | None = None
    fps: float = 0.0
    outbox_depth: int = 0
    outbox_history: list[int] = Field(default_factory=list)
    cameras: dict[str, CameraState] = Field(default_factory=dict)
    interval_s: float | None = None
    storage: str = "ok"  # edge_app.match_event.StorageHealth: ok, low, full
    reports: int = 0  # reports that updated the state (newest so far when they arrived)
    received: int = 0  # distinct reports taken in, late ones too (duplicate deliveries are not counted)
    recent: list[datetime] = Field(default_factory=list)  # sent_at of the last reports, to spot duplicates


RECENT = 32  # QoS 1 and SQS deliver at least once: a copy of one of these is a duplicate


def apply_report(state: DeviceState | None, report: HealthReport, received_at: datetime) -> DeviceState:
    """Fold one report in. A duplicate delivery changes nothing; an older report arriving late
    (a redelivery after a reconnect) is counted but does not overwrite newer state."""
    if state is not None and report.sent_at in state.recent:
        return state
    recent = ((state.recent if state else []) + [report.sent_at])[-RECENT:]
    received = (state.received if state else 0) + 1
    if state is not None and report.sent_at < state.sent_at:
        return state.model_copy(update={"received": received, "recent": recent})
    if report.camera_health:
        cameras = {cid: CameraState(fps=c.fps, state=c.state) for cid, c in report.camera_health.items()}
    else:  # a device without per-camera figures (schema 1): its cameras share the device's rate
        cameras = {cid: CameraState(fps=report.fps, state="up" if report.fps > 0 else "no frames") for cid in report.cameras}  # fmt: skip
    history = ((state.outbox_history if state else []) + [report.outbox_depth])[-OUTBOX_HISTORY:]
    return DeviceState(
        device_id=report.device_id,
        last_seen=received_at,
        sent_at=report.sent_at,
        gallery_version=report.gallery_version,
        fps=report.fps,
        outbox_depth=report.outbox_depth,
        outbox_history=history,
        cameras=cameras,
        interval_s=report.interval_s,
        storage=report.storage.state if report.storage is not None else "ok",
        reports=(state.reports if state else 0) + 1,
        received=received,
        recent=recent,
    )


def version_age(version: str | None, now: datetime) -> timedelta | None:
    if not version or not VERSION.match(version):
        return None
    return now - datetime.strptime(version, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def outbox_growing(history: list[int]) -> bool:
    """Rising across the last three reports (never falling), and not empty: events are not leaving."""
    recent = history[-3:]
    return len(recent) == 3 and recent[0] < recent[-1] and all(a <= b for a, b in zip(recent, recent[1:], strict=False))


def problems(
    state: DeviceState,
    now: datetime,
    *,
    default_interval_s: float = DEFAULT_INTERVAL_S,
    stale_after: timedelta = timedelta(hours=48),
) -> list[str]:
    """What is wrong with this device now, most urgent first; empty when all is well."""
    found = []
    interval = timedelta(seconds=state.interval_s or default_interval_s)
    silent = now - state.last_seen
    if silent > 2 * interval + SILENCE_GRACE:
        found.append(f"silent for {_human(silent)}")
    for camera_id, camera in sorted(state.cameras.items()):
        if camera.fps <= 0 or camera.state != "up":
            found.append(f"camera {camera_id} {camera.state if camera.state != 'up' else 'at 0 fps'}")
    if not state.cameras:
        found.append("no camera running")
    if state.storage != "ok":
        found.append(f"disk {state.storage}")
    if outbox_growing(state.outbox_history):
        found.append(f"outbox growing ({state.outbox_history[-3]} -> {state.outbox_depth})")
    age = version_age(state.gallery_version, now)
    if state.gallery_version is None:
        found.append("no gallery")
    elif age is not None and age > stale_after:
        found.append(f"gallery {_human(age)} old")
    return found


def _human(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
