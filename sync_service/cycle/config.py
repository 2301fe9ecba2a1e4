"""The nightly cycle's configuration: sources to ingest, gallery scopes, retention, and
what the deployed devices can load.

One JSON/YAML document, read from ``$MPD_CYCLE_CONFIG`` (the text itself, a file path,
or ``s3://bucket/key``), from ``--config FILE``, or the embedded default (every source,
one scope "all"). Locations default from ``$MPD_STORE_URL``, ``$MPD_BUILD_URL`` and
``$MPD_PUBLISHED_URL`` so the template sets them once per function. Every bad key or value
is named at start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edge_app.gallery.bundle import SUPPORTED_FORMAT_VERSIONS
from edge_app.gallery.pointer import DEFAULT_SCOPE, SCOPE_PATTERN

CONFIG_ENV = "MPD_CYCLE_CONFIG"
ScopeName = Annotated[str, Field(pattern=SCOPE_PATTERN)]


class CycleConfigError(ValueError):
    """The cycle configuration is missing or invalid (the message names the key)."""


class SourceSettings(BaseModel):
    """How one public source is ingested."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = None  # default: the public service (sync_service.ingest.cli.DEFAULT_URLS)
    states: list[str] = Field(default_factory=list)  # NamUs only; empty = every state
    # The polite rate for the whole source: shared by every worker, never exceeded in sum.
    rate_limit: float = Field(default=1.0, gt=0.0, le=50.0)
    workers: int = Field(default=4, ge=1, le=64)  # shards of the case list fetched in parallel
    timeout_s: float = Field(default=30.0, gt=0.0, le=300.0)
    retries: int = Field(default=4, ge=0, le=10)
    all_photo_categories: bool = False
    # A dev source server on this machine (`mpd dev source-server`): off by default, because a
    # public source's answer must never steer requests to loopback or private addresses.
    allow_loopback: bool = False

    @field_validator("base_url")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value


class ScopeSettings(BaseModel):
    """A regional (or agency) gallery: the persons whose cases match every non-empty filter."""

    model_config = ConfigDict(extra="forbid")

    name: ScopeName
    description: str = ""
    states: list[str] = Field(default_factory=list)  # NamUs states, by name or code ("Texas", "TX")
    countries: list[str] = Field(default_factory=list)  # ISO alpha-2; NamUs and FBI cases are "US"
    sources: list[Literal["namus", "fbi", "interpol"]] = Field(default_factory=list)  # agencies

    @field_validator("countries")
    @classmethod
    def _alpha2(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if len(v) != 2 or not v.isalpha()]
        if bad:
            raise ValueError(f"countries must be ISO 3166-1 alpha-2 codes, got {bad}")
        return [v.upper() for v in values]


class DeviceCapabilities(BaseModel):
    """What the deployed devices can load. The publish stage refuses any bundle outside it,
    so a fleet never receives a gallery it would reject (and keeps the last good one)."""

    model_config = ConfigDict(extra="forbid")

    format_versions: list[int] = Field(default_factory=lambda: list(SUPPORTED_FORMAT_VERSIONS))
    # The Greengrass artifact carries hnswlib for both platforms; set ["exact"] for a fleet
    # that runs an older artifact without it.
    search: list[Literal["exact", "hnsw"]] = Field(default_factory=lambda: ["exact", "hnsw"])
    dimension: int = Field(default=128, gt=0)
    max_full_bytes: int = Field(default=2 * 1024**3, gt=0)  # what a device's disk takes for one version
    # Embedder the devices run ("id:sha256"); empty = the one this code ships (models.weights).
    embedder: str = ""


class AnnounceSettings(BaseModel):
    """Where the retained ``latest`` announcement goes: IoT Core (data plane) or an MQTT broker."""

    model_config = ConfigDict(extra="forbid")

    via: Literal["none", "iot", "mqtt"] = "none"
    host: str = "127.0.0.1"
    port: int = 8883
    ca: str = ""
    cert: str = ""
    key: str = ""


class CycleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: str = ""  # ingest store (cloud-private)
    build: str = ""  # build output: embedding cache, build records, bundles (cloud-private)
    published: str = ""  # the gallery root devices read
    sources: dict[Literal["namus", "fbi", "interpol"], SourceSettings] = Field(
        default_factory=lambda: {name: SourceSettings() for name in ("namus", "fbi", "interpol")}
    )
    scopes: list[ScopeSettings] = Field(default_factory=list)  # in addition to "all" (everything)
    # Versions and deltas published longer ago than this are deleted; a device offline longer
    # takes the full bundle. A resolved case leaves every downloadable file at the next cycle
    # regardless (pruning keeps only what the newest pointer names).
    retention_days: float = Field(default=7.0, gt=0.0, le=90.0)
    cycle_hours: float = Field(default=24.0, gt=0.0, le=24.0 * 7)  # how often the cycle runs
    ingest_budget_s: float = Field(default=5 * 3600.0, gt=0.0)  # the night's ingest stops after this
    devices: DeviceCapabilities = Field(default_factory=DeviceCapabilities)
    announce: AnnounceSettings = Field(default_factory=AnnounceSettings)

    @model_validator(mode="after")
    def _unique_scopes(self) -> CycleConfig:
        names = [s.name for s in self.scopes]
        if DEFAULT_SCOPE in names:
            raise ValueError(f"scope name {DEFAULT_SCOPE!r} is reserved for the whole gallery")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"scope names must be unique, repeated: {duplicates}")
        return self

    def all_scopes(self) -> list[ScopeSettings]:
        """The default scope (everything, published at the gallery root) and the configured ones."""
        return [ScopeSettings(name=DEFAULT_SCOPE, description="every active case"), *self.scopes]

    def scope(self, name: str) -> ScopeSettings:
        for scope in self.all_scopes():
            if scope.name == name:
                return scope
        raise CycleConfigError(f"no scope {name!r}; configured: {[s.name for s in self.all_scopes()]}")


def parse_cycle_config(text: str | bytes, origin: str, env: dict[str, str] | None = None) -> CycleConfig:
    """Parse JSON or YAML; locations left empty come from the environment."""
    import yaml

    env = os.environ if env is None else env
    try:
        data = yaml.safe_load(text) if text and text.strip() else {}
    except yaml.YAMLError as error:
        raise CycleConfigError(f"{origin}: not JSON or YAML: {error}") from None
    if not isinstance(data, dict):
        raise CycleConfigError(f"{origin}: the cycle configuration must be a mapping")
    for key, variable in (("store", "MPD_STORE_URL"), ("build", "MPD_BUILD_URL"), ("published", "MPD_PUBLISHED_URL")):
        if not data.get(key) and env.get(variable):
            data[key] = env[variable]
    try:
        config = CycleConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in error.errors())
        raise CycleConfigError(f"{origin}: {problems}") from None
    missing = [key for key in ("store", "build", "published") if not getattr(config, key)]
    if missing:
        raise CycleConfigError(
            f"{origin}: no location for {missing} (set them in the configuration or "
            "MPD_STORE_URL / MPD_BUILD_URL / MPD_PUBLISHED_URL)"
        )
    if config.published.rstrip("/") in (config.build.rstrip("/"), config.store.rstrip("/")):
        raise CycleConfigError(f"{origin}: 'published' must differ from 'build' and 'store' (devices read it)")
    return config


def load_cycle_config(path: str | os.PathLike[str] | None = None, env: dict[str, str] | None = None) -> CycleConfig:
    """From ``path``, else ``$MPD_CYCLE_CONFIG`` (text, path or s3:// URL), else the defaults."""
    env = os.environ if env is None else env
    source = os.fspath(path) if path is not None else env.get(CONFIG_ENV, "")
    if not source:
        return parse_cycle_config("", "default cycle configuration", env)
    if source.lstrip().startswith("{") or "\n" in source:
        return parse_cycle_config(source, f"${CONFIG_ENV}", env)
    if source.startswith("s3://"):
        from sync_service.store import StoreError, open_store

        bucket_prefix, _, key = source[len("s3://") :].partition("/")
        try:
            data = open_store(f"s3://{bucket_prefix}").read_bytes(key)
        except StoreError as error:
            raise CycleConfigError(f"cannot read the cycle configuration {source}: {error}") from None
        if data is None:
            raise CycleConfigError(f"cycle configuration {source} does not exist")
        return parse_cycle_config(data, source, env)
    try:
        return parse_cycle_config(Path(source).read_text(), source, env)
    except OSError as error:
        raise CycleConfigError(f"cannot read the cycle configuration {source}: {error.strerror or error}") from None


def dump(config: CycleConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), indent=1)
