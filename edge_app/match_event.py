"""The match event: the one message a device sends when it has confirmed a person.

This is the single definition of the contract (DESIGN.md, "Flow and contracts").
The device builds it; the cloud alert handler validates incoming payloads with it.
Keep this module free of heavy imports: the alert Lambda imports it.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MATCH_SCHEMA = "mpd.match/1"
HEALTH_SCHEMA = "mpd.health/1"
# A JPEG crop is optional and capped so one event stays a few KB (IoT Core's
# default message limit is 128 KB; Greengrass spools whole messages).
MAX_CROP_BYTES = 8 * 1024
MAX_EVENT_BYTES = 16 * 1024

Similarity = Annotated[float, Field(ge=-1.0, le=1.0)]
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
