"""Alert handler settings, from environment variables (the Lambda's configuration).

The same handler runs in AWS Lambda, against moto (``AWS_ENDPOINT_URL``), and with
no cloud at all (the embedded default: SQLite tables and an SMS file sink). Which
one is ``MPD_ALERT_BACKEND``; by default ``aws`` inside Lambda or when an AWS
endpoint is configured, ``local`` otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

E164 = r"^\+[1-9][0-9]{6,14}$"

# A person lingering at one site makes one confirmed event per visit to a camera;
# responders need the first text and then an update if the person is still or again
# there a quarter of an hour later (about the time a local responder needs to arrive).
# Per case *and device*, so a sighting at another site still texts at once.
DEFAULT_COOLDOWN_SECONDS = 15 * 60
# Long enough for an after-action review of every decision, short enough not to keep
# records of where a person was seen indefinitely.
DEFAULT_AUDIT_TTL_DAYS = 90
# The source API answers in a few hundred ms when healthy; the SMS must not wait on it.
DEFAULT_CASE_LOOKUP_TIMEOUT = 1.0


# Settings field -> environment variable. JSON-valued ones are read separately.
ENV_FIELDS = {
    "backend": "MPD_ALERT_BACKEND",
    "idempotency_table": "MPD_IDEMPOTENCY_TABLE",
    "cooldown_table": "MPD_COOLDOWN_TABLE",
    "audit_table": "MPD_AUDIT_TABLE",
    "topic_arn": "MPD_ALERT_TOPIC_ARN",
    "phone_numbers": "MPD_ALERT_PHONE_NUMBERS",
    "cooldown_seconds": "MPD_ALERT_COOLDOWN_SECONDS",
    "audit_ttl_days": "MPD_AUDIT_TTL_DAYS",
    "case_lookup_timeout": "MPD_CASE_LOOKUP_TIMEOUT",
    "local_dir": "MPD_ALERT_DIR",
}
ENV_JSON = ("MPD_SITES", "MPD_SITES_FILE", "MPD_SOURCE_URLS")


class DeviceNames(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)
    timezone: str = "UTC"
    cameras: dict[str, Annotated[str, Field(min_length=1, max_length=60)]] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'America/Chicago')") from None
        return value


class Sites(BaseModel):
    """Human names of devices and cameras (``MPD_SITES`` JSON or ``MPD_SITES_FILE``)."""

    model_config = ConfigDict(extra="forbid")
    devices: dict[str, DeviceNames] = Field(default_factory=dict)

    def describe(self, device_id: str, camera_id: str) -> tuple[str, str]:
        """(camera name, device name), falling back to the ids."""
        device = self.devices.get(device_id)
        if device is None:
            return camera_id, device_id
        return device.cameras.get(camera_id, camera_id), device.name

    def timezone_of(self, device_id: str) -> str:
        device = self.devices.get(device_id)
        return device.timezone if device else "UTC"


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["aws", "local"] = "local"
    idempotency_table: str = "mpd-alert-idempotency"
    cooldown_table: str = "mpd-alert-cooldown"
    audit_table: str = "mpd-alert-audit"
    topic_arn: str | None = None
    phone_numbers: tuple[Annotated[str, Field(pattern=E164)], ...] = ()
    cooldown_seconds: int = Field(DEFAULT_COOLDOWN_SECONDS, ge=0, le=7 * 24 * 3600)
    audit_ttl_days: int = Field(DEFAULT_AUDIT_TTL_DAYS, ge=1, le=3650)
    case_lookup_timeout: float = Field(DEFAULT_CASE_LOOKUP_TIMEOUT, gt=0, le=10)
    local_dir: Path = Path(".mpd/cloud")
    # Source API base URLs for fresh case details, e.g. {"namus": "https://www.namus.gov"}.
    source_urls: dict[str, str] = Field(default_factory=dict)
    sites: Sites = Field(default_factory=Sites)

    @field_validator("phone_numbers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @property
    def sms_sink(self) -> Path:
        return self.local_dir / "sms.jsonl"

    @property
    def database(self) -> Path:
        return self.local_dir / "alerts.sqlite3"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AlertSettings:
        """Read ``MPD_*`` variables; raises ``ValueError`` naming the bad one."""
        env = os.environ if environ is None else environ
        in_aws = bool(env.get("AWS_LAMBDA_FUNCTION_NAME") or env.get("AWS_ENDPOINT_URL"))
        values: dict[str, object] = {"backend": "aws" if in_aws else "local"}
        values |= {field: env[var] for field, var in ENV_FIELDS.items() if env.get(var)}
        for variable, field in (("MPD_SOURCE_URLS", "source_urls"), ("MPD_SITES", "sites")):
            if env.get(variable):
                try:
                    values[field] = json.loads(env[variable])
                except json.JSONDecodeError as error:
                    raise ValueError(f"{variable} is not JSON: {error}") from None
        if env.get("MPD_SITES_FILE"):
            try:
                values["sites"] = json.loads(Path(env["MPD_SITES_FILE"]).read_bytes())
            except (OSError, json.JSONDecodeError) as error:
                raise ValueError(f"MPD_SITES_FILE {env['MPD_SITES_FILE']!r} unreadable: {error}") from None
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            variables = {"sites": "MPD_SITES", "source_urls": "MPD_SOURCE_URLS"} | ENV_FIELDS
            problems = "; ".join(
                f"{variables.get(str(e['loc'][0]), e['loc'][0])}"
                f"{''.join(f'[{part}]' for part in e['loc'][1:])}: {e['msg']}"
                for e in error.errors()
            )
            raise ValueError(f"bad alert configuration: {problems}") from None
