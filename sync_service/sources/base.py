"""The source adapter interface: list cases cheaply, fetch one case, fetch one photo."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urljoin

from sync_service.http import HttpError, PoliteClient
from sync_service.sources.photos import MAX_PHOTO_BYTES
from sync_service.sources.records import CaseSummary, PersonRecord, PhotoRef

log = logging.getLogger(__name__)


class SourceAdapter(ABC):
    """One public case database.

    The ingest engine calls ``list_scopes`` then ``list_scope`` for each (a NamUs
    state, or one scope ``""`` for sources listed in one go), decides from each
    summary's modified time whether to ``fetch_case``, then ``fetch_photo``s what is new.
    """

    name: str

    def __init__(self, base_url: str, client: PoliteClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client or PoliteClient()
        # Partitions whose listing could not show every case (scope -> why). Their
        # cases are still ingested, but nothing is judged vanished on such a listing.
        self.incomplete: dict[str, str] = {}

    def url(self, path_or_url: str) -> str:
        """Absolute URL for an href that may be relative to the source's base."""
        return urljoin(self.base_url + "/", path_or_url)

    def list_scopes(self, wanted: list[str] | None = None) -> list[str]:
        """The listing partitions to walk. ``wanted`` narrows them (e.g. NamUs states)."""
        if wanted:
            raise ValueError(f"{self.name} has no listing partitions; drop --states")
        return [""]

    @abstractmethod
    def list_scope(self, scope: str) -> Iterator[CaseSummary]:
        """Every case in one partition, with its modified time when the listing has it."""

    @abstractmethod
    def fetch_case(self, case_id: str) -> PersonRecord | None:
        """The current case, or None if the source no longer publishes it (HTTP 404).

        Raises ``MalformedCase`` for a body that cannot be parsed and ``HttpError``
        when the source cannot be reached.
        """

    def fetch_photo(self, photo: PhotoRef) -> bytes:
        """The photo's bytes (size-capped); raises ``HttpError`` on a non-2xx answer."""
        response = self.client.get(photo.url, max_bytes=MAX_PHOTO_BYTES)
        if not response.ok:
            raise HttpError(f"GET {photo.url}: HTTP {response.status_code}", photo.url, response.status_code)
        return response.content


# --- small parsing helpers shared by the adapters -------------------------------------


def dig(data: Any, *path: str | int) -> Any:
    """``data[p0][p1]...`` or None when any step is missing or of the wrong type."""
    for step in path:
        if isinstance(step, int):
            if not isinstance(data, list) or not -len(data) <= step < len(data):
                return None
        elif not isinstance(data, dict):
            return None
        data = data[step] if isinstance(step, int) else data.get(step)
        if data is None:
            return None
    return data


def text(value: Any) -> str | None:
    """A stripped non-empty string, or None."""
    if isinstance(value, str) and value.strip():
        return " ".join(value.split())
    return None


def integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_datetime(value: Any, field: str, case_id: str) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        log.warning("case %s: ignoring unreadable %s %r", case_id, field, value)
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def parse_date(value: Any, field: str, case_id: str) -> date | None:
    """A ``YYYY-MM-DD`` date (a time part after it is ignored), or None with a warning."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.strptime(value.strip()[:10], "%Y-%m-%d").date()
    except ValueError:
        log.warning("case %s: ignoring unreadable %s %r", case_id, field, value)
        return None


def sex_of(value: Any) -> str:
    word = (text(value) or "").lower()
    return {"male": "male", "m": "male", "female": "female", "f": "female"}.get(word, "unknown")
