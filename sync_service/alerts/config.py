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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

E164 = r"^\+[1-9][0-9]{6,14}$"
EMAIL = r"^[^@\s<>,;\"]{1,64}@[A-Za-z0-9.-]{1,190}\.[A-Za-z]{2,24}$"
Language = Literal["en", "es"]

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
# A compromised or broken device must not page a site's responders without end: at
# most this many alerts per device per hour reach anyone (the rest wait on the page).
DEFAULT_DEVICE_ALERTS_PER_HOUR = 12


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
    "device_alerts_per_hour": "MPD_DEVICE_ALERTS_PER_HOUR",
    "gallery_url": "MPD_GALLERY_URL",
    "store_url": "MPD_STORE_URL",
    "review_url": "MPD_REVIEW_URL",
    "review_table": "MPD_REVIEW_TABLE",
    "review_audit_table": "MPD_REVIEW_AUDIT_TABLE",
    "crop_bucket": "MPD_CROP_BUCKET",
    "crop_kms_key": "MPD_CROP_KMS_KEY",
    "crop_ttl_days": "MPD_CROP_TTL_DAYS",
    "mail_from": "MPD_MAIL_FROM",
    "notify_retry_attempts": "MPD_NOTIFY_RETRY_ATTEMPTS",
    "notify_retry_minutes": "MPD_NOTIFY_RETRY_MINUTES",
}
ENV_JSON = ("MPD_SITES", "MPD_SITES_FILE", "MPD_SOURCE_URLS")


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name such as 'America/Chicago')") from None
    return value


SiteId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]


class DeviceNames(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)
    timezone: str = "UTC"
    cameras: dict[str, Annotated[str, Field(min_length=1, max_length=60)]] = Field(default_factory=dict)
    site: SiteId | None = None  # the site it belongs to (``sites``); alone, a device is its own site

    _zone = field_validator("timezone")(_known_zone)


class Recipient(BaseModel):
    """A person to notify: an SMS number and/or an e-mail address, in their language."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    phone: Annotated[str, Field(pattern=E164)] | None = None
    email: Annotated[str, Field(pattern=EMAIL)] | None = None
    language: Language | None = None  # default: the site's


class SiteSettings(BaseModel):
    """One field site: how its alerts are reviewed and whom they reach."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=80)
    timezone: str = "UTC"
    language: Language = "en"
    # before: responders are texted once a reviewer confirms; after: at once, with a
    # follow-up if a reviewer dismisses the alert.
    review: Literal["before", "after"] = "before"
    escalate_after_minutes: int = Field(10, ge=1, le=24 * 60)
    # One look-alike must not page everyone all night: a dismissal silences that
    # person at this site for this long.
    suppress_after_dismissal_minutes: int = Field(240, ge=0, le=7 * 24 * 60)
    # A pending alert nobody decided is closed as expired after this long.
    expire_after_hours: int = Field(24, ge=1, le=30 * 24)
    reviewers: list[Recipient] = Field(default_factory=list, max_length=50)
    second_reviewers: list[Recipient] = Field(default_factory=list, max_length=50)
    responders: list[Recipient] = Field(default_factory=list, max_length=50)
    # Opt in: the case's investigating agency, when the source gives a contact, is told as
    # a responder (after a confirmation in ``before`` mode; at once and with the follow-up
    # on a dismissal in ``after`` mode), on these channels, in the site's language.
    notify_case_agency: bool = False
    case_agency_channels: list[Literal["sms", "email"]] = Field(default_factory=lambda: ["sms", "email"], min_length=1)

    _zone = field_validator("timezone")(_known_zone)


class Sites(BaseModel):
    """Devices, cameras and sites (``MPD_SITES`` JSON or ``MPD_SITES_FILE``)."""

    model_config = ConfigDict(extra="forbid")
    devices: dict[str, DeviceNames] = Field(default_factory=dict)
    sites: dict[SiteId, SiteSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _sites_exist(self) -> Sites:
        for device_id, device in self.devices.items():
            if device.site is not None and device.site not in self.sites:
                raise ValueError(f"device {device_id!r} names site {device.site!r}, which is not in 'sites'")
        return self

    def describe(self, device_id: str, camera_id: str) -> tuple[str, str]:
        """(camera name, device name) from this table only: no device string reaches a person.

        A camera the table does not name is "camera"; a device it does not know is
        named by its id, which is the IoT thing name the topic authenticated.
        """
        device = self.devices.get(device_id)
        if device is None:
            return "camera", device_id
        return device.cameras.get(camera_id, "camera"), device.name

    def timezone_of(self, device_id: str) -> str:
        device = self.devices.get(device_id)
        return device.timezone if device else "UTC"

    def site_of(self, device_id: str) -> tuple[str, SiteSettings]:
        """(site id, settings) of a device; a device with no site is a site of its own."""
        device = self.devices.get(device_id)
        if device is not None and device.site is not None:
            return device.site, self.sites[device.site]
        if device_id in self.sites:
            return device_id, self.sites[device_id]
        name = device.name if device is not None else device_id
        return device_id, SiteSettings(name=name, timezone=device.timezone if device else "UTC")


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
    device_alerts_per_hour: int = Field(DEFAULT_DEVICE_ALERTS_PER_HOUR, ge=1, le=10_000)
    # Published gallery person tables (``<version>/full/``): events are checked against them.
    gallery_url: str | None = None
    # The ingest store: case photos shown beside the camera's crop.
    store_url: str | None = None
    # Base of the short links in messages (the review page, ``mpd cloud serve --review-port``).
    review_url: str = "http://127.0.0.1:8080"
    review_table: str = "mpd-review"
    review_audit_table: str = "mpd-review-audit"
    crop_bucket: str | None = None  # AWS: S3 bucket (SSE-KMS) for face crops
    crop_kms_key: str | None = None
    # The camera's crop of the matched face is kept this long, then deleted.
    crop_ttl_days: int = Field(30, ge=1, le=365)
    mail_from: str | None = Field(None, pattern=EMAIL)  # SES sender for reviewer e-mail
    # A notification after a decision (responders, follow-up, escalation) that did not reach
    # everyone is retried by the sweep with backoff, up to this many attempts or this long
    # after the decision; then it is given up: audited, shown on the page, and alarmed on AWS.
    notify_retry_attempts: int = Field(12, ge=1, le=100)
    notify_retry_minutes: int = Field(180, ge=1, le=48 * 60)

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
