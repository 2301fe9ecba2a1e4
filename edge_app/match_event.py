"""The match event: the one message a device sends when it has confirmed a person.

This is the single definition of the contract (DESIGN.md, "Flow and contracts").
The device builds it; the cloud alert handler validates incoming payloads with it.
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
HEALTH_SCHEMA = "mpd.health/1"
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
    """One camera in a health report: its *current* rate, not a lifetime average, so a camera
    unplugged a minute ago shows 0 at the next report."""

    model_config = ConfigDict(extra="forbid")

    fps: Annotated[float, Field(ge=0.0, le=1000.0)]  # frames read since the previous report / seconds since
    state: Literal["ok", "no frames", "stopped"] = "ok"


class HealthReport(BaseModel):
    """Periodic device health on ``mpd/{device_id}/health``."""

    model_config = ConfigDict(extra="forbid")

    schema_: Literal["mpd.health/1"] = Field(HEALTH_SCHEMA, alias="schema")
    device_id: Identifier
    sent_at: datetime = Field(default_factory=utc_now)
    gallery_version: str | None = None
    fps: float = 0.0
    outbox_depth: int = 0
    cameras: list[str] = Field(default_factory=list)
    camera_health: dict[str, CameraHealth] = Field(default_factory=dict)  # camera id -> current state
    interval_s: float | None = None  # the device's health interval: how long silence is normal
    detail: dict[str, float | int | str] = Field(default_factory=dict)

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)
