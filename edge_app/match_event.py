"""The device's two wire messages: the match event (a confirmed person) and the health report.

This is the single definition of both contracts. The device builds them; the cloud alert
handler and the fleet-health consumer validate incoming payloads with them.
Keep this module free of heavy imports: the alert Lambda imports it.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MATCH_SCHEMA = "mpd.match/1"
HEALTH_SCHEMA = "mpd.health/2"
# Health messages of older devices still parse: the fields added since have defaults.
HEALTH_SCHEMAS = ("mpd.health/1", HEALTH_SCHEMA)
MAX_HEALTH_BYTES = 64 * 1024
# A JPEG crop is optional and capped so one event stays a few KB (IoT Core's
# default message limit is 128 KB; Greengrass spools whole messages).
MAX_CROP_BYTES = 8 * 1024
MAX_EVENT_BYTES = 16 * 1024

Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
# Contract-level plausibility (checked by the cloud against the time IoT received the
# event, ``MatchEvent.implausibility``). A threshold below this matches strangers all
# the time with any face embedder we use (SFace impostor scores reach 0.3 at 1 in 10^4).
MIN_THRESHOLD = 0.3
# The device reports the similarities it compared with its threshold, rounded to 4
# places; a live threshold change between frames may leave the best one a little under.
THRESHOLD_SLACK = 0.02
# Device clocks (NTP at the site, or none for a while) may run a little ahead.
MAX_CLOCK_AHEAD = timedelta(minutes=5)
# Older than this, the idempotency record of a first delivery may have expired, so a
# replay could text twice; and a sighting a month old is no longer something to act on.
MAX_EVENT_AGE = timedelta(days=30)
# One confirmation spans a few seconds of one track; a day is far beyond any real one.
MAX_TRACK_DURATION = timedelta(hours=24)
Identifier = Annotated[str, Field(min_length=1, max_length=128)]


def match_topic(device_id: str) -> str:
    return f"mpd/{device_id}/match"


def health_topic(device_id: str) -> str:
    return f"mpd/{device_id}/health"


def utc_now() -> datetime:
    return datetime.now(UTC)


class MatchEvent(BaseModel):
    """A confirmed match. Field names are the wire format."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_: Literal["mpd.match/1"] = Field(MATCH_SCHEMA, alias="schema")
    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    device_id: Identifier
    camera_id: Identifier
    person_id: Identifier
    source: Identifier
    case_id: Identifier
    display_name: Annotated[str, Field(max_length=200)] = ""
    best_similarity: Similarity
    mean_similarity: Similarity
    frames_used: Annotated[int, Field(ge=1, le=10_000)]
    first_seen: datetime
    last_seen: datetime
    gallery_version: Identifier
    model_id: Identifier
    threshold: Similarity
    crop_jpeg_b64: Annotated[str | None, Field(max_length=(MAX_CROP_BYTES * 4) // 3 + 4)] = None

    @field_validator("first_seen", "last_seen")
    @classmethod
    def _must_be_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("timestamp must carry a UTC offset (ISO 8601 with 'Z' or '+00:00')")
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> MatchEvent:
        # Invariants every honest device satisfies; thresholds and clocks are checked by
        # ``implausibility`` (cloud side), since they need the receive time.
        if self.first_seen > self.last_seen:
            raise ValueError("first_seen is after last_seen")
        if self.last_seen - self.first_seen > MAX_TRACK_DURATION:
            raise ValueError(f"first_seen to last_seen spans more than {MAX_TRACK_DURATION}")
        if self.mean_similarity > self.best_similarity + 1e-6:
            raise ValueError("mean_similarity is above best_similarity")
        return self

    def implausibility(self, received_at: datetime) -> str | None:
        """Why this event cannot be a real confirmation received at ``received_at``, or None."""
        if self.threshold < MIN_THRESHOLD:
            return f"threshold {self.threshold} is below {MIN_THRESHOLD}: no calibrated threshold is that low"
        if self.best_similarity < self.threshold - THRESHOLD_SLACK:
            return f"best_similarity {self.best_similarity} is below the threshold {self.threshold}"
        if self.last_seen > received_at + MAX_CLOCK_AHEAD:
            return f"last_seen {self.last_seen.isoformat()} is ahead of the receive time {received_at.isoformat()}"
        if self.first_seen < received_at - MAX_EVENT_AGE:
            return f"first_seen {self.first_seen.isoformat()} is more than {MAX_EVENT_AGE.days} days before receipt"
        return None

    @field_validator("crop_jpeg_b64")
    @classmethod
    def _crop_is_jpeg(cls, value: str | None) -> str | None:
        if value is None:
            return None
        raw = base64.b64decode(value, validate=True)
        if len(raw) > MAX_CROP_BYTES:
            raise ValueError(f"crop is {len(raw)} bytes, more than {MAX_CROP_BYTES}")
        if not raw.startswith(b"\xff\xd8"):
            raise ValueError("crop is not a JPEG")
        return value

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, payload: bytes | str) -> MatchEvent:
        """Parse and validate a wire payload; raises ``ValueError`` naming what is wrong."""
        if isinstance(payload, bytes | bytearray) and len(payload) > MAX_EVENT_BYTES:
            raise ValueError(f"payload is {len(payload)} bytes, more than {MAX_EVENT_BYTES}")
        if isinstance(payload, str) and len(payload.encode()) > MAX_EVENT_BYTES:
            raise ValueError(f"payload is more than {MAX_EVENT_BYTES} bytes")
        try:
            data = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:  # RecursionError: "[[[[..."
            raise ValueError(f"payload is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("payload is not a JSON object")
        if data.get("schema") != MATCH_SCHEMA:
            raise ValueError(f"unknown schema {data.get('schema')!r}, expected {MATCH_SCHEMA!r}")
        return cls.model_validate(data)


class CameraHealth(BaseModel):
    """One camera's state in a health message.

    ``up``: frames arrive. ``reconnecting``: the camera stopped delivering (or was not
    reachable at start) and is being retried with backoff. ``down``: still unreachable
    after ``capture.down_after_s``; it is still retried. ``since`` is when the camera
    entered its state."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["up", "reconnecting", "down"]
    since: datetime | None = None
    fps: Annotated[float, Field(ge=0.0, le=1000.0)] = 0.0  # frames processed per second over the recent window
    dropped: Annotated[int, Field(ge=0)] = 0  # frames dropped (processing behind) over the recent window
    skipped_no_motion: Annotated[int, Field(ge=0)] = 0  # frames not searched for faces (no motion), same window
    error: Annotated[str | None, Field(max_length=300)] = None  # why it is not up

    @field_validator("since")
    @classmethod
    def _since_is_aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else _aware(value)


class StorageHealth(BaseModel):
    """The disk the outbox writes to. ``low``: free space is below the reserve kept for the
    outbox (gallery downloads are refused). ``full``: the last outbox write failed for lack
    of space; confirmed events are held in memory (``events_in_memory``, bounded) and retried."""

    model_config = ConfigDict(extra="forbid")
    state: Literal["ok", "low", "full"]
    free_bytes: Annotated[int, Field(ge=0)]
    reserve_bytes: Annotated[int, Field(ge=0)]
    events_in_memory: Annotated[int, Field(ge=0)] = 0
    events_lost: Annotated[int, Field(ge=0)] = 0  # memory bound exceeded while the disk stayed full
    error: Annotated[str | None, Field(max_length=300)] = None


class HealthReport(BaseModel):
    """Periodic device health on ``mpd/{device_id}/health``.

    Schema 2 (this one) added ``fps_window_s``, ``camera_health``, ``storage`` and
    ``interval_s`` and made ``fps`` the current rate (frames processed per second over the last
    ``fps_window_s``, all cameras) instead of the average since start. Schema 1 messages parse
    with defaults."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["mpd.health/1", "mpd.health/2"] = Field(HEALTH_SCHEMA, alias="schema")
    device_id: Identifier
    sent_at: datetime = Field(default_factory=utc_now)
    gallery_version: str | None = None
    fps: Annotated[float, Field(ge=0.0)] = 0.0
    fps_window_s: Annotated[float | None, Field(gt=0.0)] = None
    outbox_depth: Annotated[int, Field(ge=0)] = 0
    cameras: list[str] = Field(default_factory=list)  # ids, as in schema 1
    camera_health: dict[str, CameraHealth] = Field(default_factory=dict)  # camera id -> its state now
    storage: StorageHealth | None = None
    interval_s: Annotated[float | None, Field(gt=0.0)] = (
        None  # the device's health interval: how long silence is normal
    )
    detail: dict[str, float | int | str] = Field(default_factory=dict)

    @field_validator("sent_at")
    @classmethod
    def _sent_at_is_aware(cls, value: datetime) -> datetime:
        return _aware(value)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    @classmethod
    def from_json(cls, payload: bytes | str) -> HealthReport:
        """Parse a health message of any known schema; raises ``ValueError`` naming what is wrong."""
        if len(payload) > MAX_HEALTH_BYTES:
            raise ValueError(f"health payload is {len(payload)} bytes, more than {MAX_HEALTH_BYTES}")
        try:
            data = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
            raise ValueError(f"health payload is not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError("health payload is not a JSON object")
        if data.get("schema") not in HEALTH_SCHEMAS:
            raise ValueError(f"unknown schema {data.get('schema')!r}, expected one of {HEALTH_SCHEMAS}")
        return cls.model_validate(data)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset (ISO 8601 with 'Z' or '+00:00')")
    return value.astimezone(UTC)
