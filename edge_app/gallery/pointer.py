"""The gallery pointer ``latest.json``: the one definition of where the newest bundle is.

The cloud publisher writes it (and announces it on ``mpd/gallery/latest``); the device's
sync agent reads it. It is not signed on purpose: it only points. The bundles it points
at are signed (``bundle.py``), and the device refuses a version that is not newer than
the one it holds, so a replayed or forged pointer cannot take a device backwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_app.gallery.bundle import BundleError, ModelRef

POINTER = "latest.json"
POINTER_SCHEMA = "mpd.gallery.latest/1"
ANNOUNCE_TOPIC = "mpd/gallery/latest"
MAX_POINTER_BYTES = 64 * 1024
# Regional (or agency) galleries: the default scope is the whole gallery at the root; a named
# scope has its own root, pointer, versions, deltas and announcement topic.
DEFAULT_SCOPE = "all"
SCOPE_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


def scope_prefix(scope: str) -> str:
    """A scope's gallery root relative to the published root ("" for the whole gallery)."""
    return "" if scope in ("", DEFAULT_SCOPE) else f"scopes/{scope}/"


def scope_source(source: str, scope: str) -> str:
    """The gallery root a device of ``scope`` syncs from, given the published root ``source``."""
    prefix = scope_prefix(scope)
    return source if not prefix else source.rstrip("/") + "/" + prefix


def announce_topic(scope: str) -> str:
    """The retained topic announcing a scope's newest version."""
    return ANNOUNCE_TOPIC if scope in ("", DEFAULT_SCOPE) else f"mpd/gallery/{scope}/latest"


class PointerError(BundleError):
    """A pointer (``latest.json`` or an announcement) is too large, malformed or points outside the root."""


class DeltaRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_version: str
    path: str  # relative to the gallery root, ends with "/"


class LatestPointer(BaseModel):
    """``latest.json``: where the newest bundle is. Unsigned on purpose: it only points;
    the bundles it points at are signed, and the device refuses to go backwards."""

    model_config = ConfigDict(extra="forbid")
    schema_: Literal["mpd.gallery.latest/1"] = Field(POINTER_SCHEMA, alias="schema")
    gallery_version: str
    full: str  # relative path of the full bundle, ends with "/"
    delta: DeltaRef | None = None  # against the version before this one
    older_deltas: list[DeltaRef] = Field(default_factory=list)  # against earlier ones (devices that missed nights)
    embedder: ModelRef
    published_at: datetime

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, indent=1)

    def all_deltas(self) -> list[DeltaRef]:
        return ([self.delta] if self.delta else []) + self.older_deltas

    @classmethod
    def parse(cls, payload: bytes | str, origin: str) -> LatestPointer:
        """Validate a pointer; raises ``PointerError`` naming ``origin`` and what is wrong."""
        if len(payload) > MAX_POINTER_BYTES:
            raise PointerError(f"{origin}: gallery pointer is {len(payload)} bytes, more than {MAX_POINTER_BYTES}")
        try:
            pointer = cls.model_validate_json(payload)
        except ValidationError as error:
            raise PointerError(f"{origin}: malformed gallery pointer: {error}") from None
        for path in [pointer.full] + [ref.path for ref in pointer.all_deltas()]:
            if path.startswith("/") or ".." in path.split("/") or "://" in path:
                raise PointerError(f"{origin}: gallery pointer path {path!r} leaves the gallery root")
        return pointer
