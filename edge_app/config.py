"""Device configuration: one validated model, from a file, MPD_ environment variables and
the Greengrass component configuration (where every number arrives as a string).

Precedence, lowest first: defaults, the config file (YAML or JSON), the Greengrass
component configuration, MPD_ environment variables (nested keys with ``__``, e.g.
``MPD_MQTT__HOST``; lists as JSON, e.g. ``MPD_CAMERAS='[{"id": "door", "source": "0"}]'``).

A running pipeline takes updates through ``apply_update``: only the keys in
``LIVE_KEYS`` (thresholds, confirmation, cooldown, cameras) change without a restart;
anything else is refused with a message saying so. Every error names the key and value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# Keys a running pipeline applies without a restart (Greengrass configuration updates).
LIVE_KEYS = frozenset({"recognition", "cameras", "health_interval_s", "motion"})


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad key and value."""


class CameraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    # A video file, a camera index ("0"), an rtsp:// or http(s):// URL, or an image folder.
    source: str = Field(min_length=1)


class RecognitionConfig(BaseModel):
    """How a face becomes a confirmed match. Defaults are measured (docs/device.md)."""

    model_config = ConfigDict(extra="forbid")
    # Cosine similarity a frame needs to vote for a person; None = the calibrated default
    # in models/thresholds.py.
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # A frame whose best and second-best persons are closer than this votes for no one.
    margin: float = Field(default=0.03, ge=0.0, le=1.0)
    confirm_frames: int = Field(default=3, ge=1, le=100)  # agreeing votes needed...
    confirm_window: int = Field(default=5, ge=1, le=300)  # ...among this many recent embedded frames
    cooldown_s: float = Field(default=600.0, ge=0.0, le=7 * 86400)  # per person per camera
    # A confirmed track is re-embedded this often (frames) to notice an identity switch.
    recheck_every: int = Field(default=15, ge=1, le=10_000)
    # A track that has voted "no one" for a full window is re-embedded only this often.
    stranger_every: int = Field(default=3, ge=1, le=10_000)
    track_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)
    send_crop: bool = True
    crop_max_px: int = Field(default=96, ge=32, le=256)

    @model_validator(mode="after")
    def _window_holds_votes(self) -> RecognitionConfig:
        if self.confirm_frames > self.confirm_window:
            raise ValueError(
                f"confirm_frames ({self.confirm_frames}) is larger than confirm_window ({self.confirm_window})"
            )
        return self


# Frames a camera may be behind before its oldest is dropped: 0.3 s at 10 fps, enough to catch
# up after the bursts measured with 16 cameras (docs/device.md), 3 frames of memory per camera.
BUFFER_FRAMES = 3


class CaptureConfig(BaseModel):
    """How camera frames are buffered, and how live cameras that are unreachable or stop
    delivering are retried (docs/device.md)."""

    model_config = ConfigDict(extra="forbid")
    reconnect_initial_s: float = Field(default=1.0, gt=0.0, le=60.0)  # first wait, doubling...
    reconnect_max_s: float = Field(default=10.0, gt=0.0, le=600.0)  # ...up to this
    down_after_s: float = Field(default=60.0, gt=0.0, le=86_400.0)  # "reconnecting" this long is "down"
    buffer_frames: int = Field(default=BUFFER_FRAMES, ge=1, le=30)  # frames a camera may be behind

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> CaptureConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s ({self.reconnect_max_s}) is below reconnect_initial_s ({self.reconnect_initial_s})"
            )
        return self


class MotionConfig(BaseModel):
    """Skip face detection on frames with no motion (edge_app/pipeline/motion.py, docs/device.md)."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    width: int = Field(default=160, ge=32, le=1280)  # pixels wide the frames are compared at
    pixel_threshold: int = Field(default=18, ge=1, le=255)  # grey levels a pixel must change by
    min_area: float = Field(default=0.002, gt=0.0, le=1.0)  # fraction of pixels that must change
    recheck_s: float = Field(default=2.0, gt=0.0, le=3600.0)  # detect at least this often anyway


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Path("mpd-outbox/outbox.sqlite3")  # its directory is created 0700, the files 0600
    max_events: int = Field(default=10_000, ge=10, le=10_000_000)
    # Kept free beside the database and given back when the disk fills, so the outbox can write.
    reserve_mb: float = Field(default=16.0, ge=0.0, le=10_000.0)
    # Events held in memory while the disk cannot take them (the oldest dropped past this).
    max_in_memory: int = Field(default=1000, ge=1, le=100_000)
    backoff_initial_s: float = Field(default=1.0, gt=0.0, le=600.0)
    backoff_max_s: float = Field(default=300.0, gt=0.0, le=86_400.0)


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = ""
    port: int = Field(default=8883, ge=1, le=65535)
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    client_id: str = ""  # default: the device id (IoT Core policies usually pin it)
    keepalive_s: int = Field(default=60, ge=5, le=1200)
    ack_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)


class GalleryConfig(BaseModel):
    """The gallery sync agent inside ``mpd edge run`` (docs/gallery.md). With no source the
    pipeline runs on the bundle it started with; with one it keeps the gallery fresh."""

    model_config = ConfigDict(extra="forbid")
    source: str = ""  # gallery root: a folder, http(s):// or s3://bucket/prefix; "" = no sync
    dir: Path | None = None  # the device gallery directory (versions/, current); --bundle overrides
    public_key: str = ""  # Ed25519 public key: a PEM file path or the PEM text itself
    interval_s: float = Field(default=3600.0, ge=1.0, le=7 * 86400)  # seconds between polls of latest.json
    announcements: bool = False  # also sync on the retained mpd/gallery/latest message (uses mqtt.*)
    # The regional (or agency) gallery this device searches, as the cloud configuration names
    # it; "" or "all" = the whole gallery. Its files are under <source>/scopes/<scope>/.
    scope: str = Field(default="", pattern=r"^$|^[a-z0-9][a-z0-9-]{0,62}$")
    # One whole sync (every request and download in it) ends by then; what arrived is kept.
    sync_deadline_s: float = Field(default=3600.0, ge=10.0, le=7 * 86400)
    min_free_mb: float = Field(default=64.0, ge=0.0, le=1_000_000.0)  # a download never leaves less free

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, source: str) -> str:
        if "://" in source and not source.startswith(("http://", "https://", "s3://")):
            raise ValueError("use a folder, http(s):// or s3:// location")
        return source

    @field_validator("public_key")
    @classmethod
    def _key_loads(cls, public_key: str) -> str:
        if public_key:
            from edge_app.gallery.bundle import BundleError
            from edge_app.gallery.install import load_public_key

            try:
                load_public_key(public_key_material(public_key))
            except BundleError as error:
                raise ValueError(str(error)) from None
        return public_key


def public_key_material(value: str) -> str | bytes:
    """PEM text as bytes, anything else as a file path (what ``load_public_key`` takes)."""
    return value.encode() if value.lstrip().startswith("-----BEGIN") else value


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    device_id: str = Field(
        default_factory=lambda: os.environ.get("AWS_IOT_THING_NAME", "mpd-device"),
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:-]+$",
    )
    cameras: list[CameraConfig] = Field(default_factory=list)
    capture: CaptureConfig = Field(default_factory=CaptureConfig)
    motion: MotionConfig = Field(default_factory=MotionConfig)
    recognition: RecognitionConfig = Field(default_factory=RecognitionConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    publisher: Literal["stdout", "file", "mqtt", "greengrass"] = "stdout"
    file_path: Path = Path("mpd-events.jsonl")
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    health_interval_s: float = Field(default=60.0, gt=0.0, le=86_400.0)
    # Each health report is also written here (atomically), for a local watcher such as the
    # Greengrass health gate that decides whether a new release came up healthy.
    health_file: Path | None = None
    gallery: GalleryConfig = Field(default_factory=GalleryConfig)

    @model_validator(mode="after")
    def _publisher_is_usable(self) -> EdgeConfig:
        # The mqtt publisher and the gallery announcement listener connect with the same identity.
        mqtt_users = ["publisher 'mqtt'"] if self.publisher == "mqtt" else []
        mqtt_users += ["gallery.announcements"] if self.gallery.announcements else []
        for user in mqtt_users:
            missing = [name for name in ("host", "ca", "cert", "key") if not getattr(self.mqtt, name)]
            if missing:
                raise ValueError(f"{user} needs mqtt.{', mqtt.'.join(missing)}")
            for name in ("ca", "cert", "key"):
                path = getattr(self.mqtt, name)
                if not Path(path).is_file():
                    raise ValueError(f"mqtt.{name} = '{path}': file not found")
        ids = [camera.id for camera in self.cameras]
        if len(ids) != len(set(ids)):
            raise ValueError(f"cameras: duplicate camera id in {ids}")
        return self


class _EnvironmentConfig(EdgeConfig, BaseSettings):
    """EdgeConfig that also reads MPD_ variables; used only while loading, so that a later
    live update is exactly current + update (a BaseSettings would re-read the environment)."""

    model_config = SettingsConfigDict(env_prefix="MPD_", env_nested_delimiter="__", extra="forbid")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file: an operator overrides one value without editing it.
        return env_settings, init_settings


def describe_errors(error: ValidationError) -> str:
    """One line per bad key: ``recognition.threshold = '1.7': Input should be ...``."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(config)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif item["loc"] and not isinstance(item.get("input"), dict | list):
            lines.append(f"{key} = {item.get('input')!r}: {message}")
        elif item["loc"]:
            lines.append(f"{key}: {message}")
        else:
            lines.append(f"{message}")
    return "; ".join(lines)


def read_config_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping; raises ConfigError naming the file and the problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"config file {path}: {error.strerror or error}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(
            f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(
    path: Path | None = None,
    component_config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> EdgeConfig:
    """Build and validate the configuration; raises ConfigError naming the bad key and value.

    ``overrides`` are command-line values (highest precedence, above the environment).
    """
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    if component_config:
        data = _merge(data, component_config)
    try:
        config = EdgeConfig.model_validate(_EnvironmentConfig(**data).model_dump())
        if overrides:
            config = EdgeConfig.model_validate(_merge(config.model_dump(), overrides))
    except ValidationError as error:
        raise ConfigError(f"invalid configuration: {describe_errors(error)}") from None
    return config


def apply_update(current: EdgeConfig, update: Mapping[str, Any]) -> EdgeConfig:
    """Validate an update for a running pipeline and return the new configuration.

    Only ``LIVE_KEYS`` may change; the environment is not re-read (model_validate does not
    consult settings sources), so the update is exactly current + update.
    """
    if not isinstance(update, Mapping):
        raise ConfigError(f"configuration update must be a mapping, not {type(update).__name__}")
    merged = _merge(current.model_dump(), update)
    try:
        candidate = EdgeConfig.model_validate(merged)
    except ValidationError as error:
        raise ConfigError(f"invalid configuration update: {describe_errors(error)}") from None
    changed = {key for key in EdgeConfig.model_fields if getattr(candidate, key) != getattr(current, key)}
    needs_restart = sorted(changed - LIVE_KEYS)
    if needs_restart:
        raise ConfigError(f"configuration update changes {', '.join(needs_restart)}, which need a restart")
    return candidate
