"""Public case databases behind one adapter interface, yielding ``PersonRecord``s.

from sync_service.sources import make_adapter
adapter = make_adapter("namus", "https://www.namus.gov", rate_limit=1.0)
record = adapter.fetch_case("MP71320")   # PersonRecord, or None when the case is gone
"""

from __future__ import annotations

import importlib
from collections.abc import Collection

from sync_service.http import PoliteClient
from sync_service.sources.base import SourceAdapter
from sync_service.sources.records import (
    SOURCES,
    AgeRange,
    CaseSummary,
    MalformedCase,
    PersonRecord,
    PhotoRef,
)

__all__ = [
    "SOURCES",
    "AgeRange",
    "CaseSummary",
    "MalformedCase",
    "PersonRecord",
    "PhotoRef",
    "SourceAdapter",
    "make_adapter",
]

ADAPTERS = {
    "namus": "sync_service.sources.namus:NamusAdapter",
    "fbi": "sync_service.sources.fbi:FbiAdapter",
    "interpol": "sync_service.sources.interpol:InterpolAdapter",
}


def make_adapter(
    source: str,
    base_url: str,
    *,
    rate_limit: float = 1.0,
    read_timeout: float = 30.0,
    max_attempts: int = 5,
    client: PoliteClient | None = None,
    photo_hosts: Collection[str] | None = None,
    allow_loopback: bool | None = None,
) -> SourceAdapter:
    """An adapter for ``source`` at ``base_url``. For a quick lookup (the alert handler)
    pass a short ``read_timeout`` and ``max_attempts=1``. ``photo_hosts`` replaces the
    source's default photo host allow-list (the API's own host is always allowed);
    ``allow_loopback`` (default: ``$MPD_SOURCES_ALLOW_LOOPBACK``) admits local dev servers."""
    if source not in ADAPTERS:
        raise ValueError(f"unknown source {source!r}; known: {sorted(ADAPTERS)}")
    module_name, class_name = ADAPTERS[source].split(":")
    adapter_class = getattr(importlib.import_module(module_name), class_name)
    client = client or PoliteClient(
        rate_limit, read_timeout=read_timeout, max_attempts=max_attempts, allow_loopback=allow_loopback
    )
    return adapter_class(base_url, client, photo_hosts=photo_hosts)
