"""The source adapter interface: list cases cheaply, fetch one case, fetch one photo."""

from __future__ import annotations

import logging
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urljoin

from pydantic import ValidationError

from sync_service.http import HttpError, PoliteClient, host_key
from sync_service.sources.photos import MAX_PHOTO_BYTES
from sync_service.sources.records import AgeRange, CaseSummary, PersonRecord, PhotoRef

log = logging.getLogger(__name__)

# One case body, decoded. Real ones are 5-80 KB; the cap keeps a hostile answer from
# filling the memory of the ingest or of the 256 MB alert Lambda (parsed JSON can take
# ~25x its text).
MAX_CASE_BYTES = 1024 * 1024


class SourceAdapter(ABC):
    """One public case database.

    The ingest engine calls ``list_scopes`` then ``list_scope`` for each (a NamUs
    state, or one scope ``""`` for sources listed in one go), decides from each
    summary's modified time whether to ``fetch_case``, then ``fetch_photo``s what is new.
    """

    name: str
    # Hosts the real API serves photos from; the API's own host is always allowed too.
    default_photo_hosts: tuple[str, ...] = ()

    def __init__(
        self, base_url: str, client: PoliteClient | None = None, photo_hosts: Collection[str] | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = client or PoliteClient()
        self.api_hosts = frozenset({host_key(self.base_url)})
        # A photo link or a redirect to any other host is refused without a request.
        chosen = self.default_photo_hosts if photo_hosts is None else photo_hosts
        self.photo_hosts = frozenset(h.strip().lower() for h in chosen if h.strip()) | self.api_hosts
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
        """The photo's bytes (size-capped, from an allowed photo host only); raises
        ``BlockedRequest`` for a link or redirect elsewhere and ``HttpError`` on a non-2xx answer."""
        response = self.client.get(photo.url, max_bytes=MAX_PHOTO_BYTES, allowed_hosts=self.photo_hosts)
        if not 200 <= response.status_code < 300:
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
    """A stripped non-empty string with whitespace runs collapsed and control, format and
    surrogate characters removed (a source's text may reach a responder's SMS, and a lone
    surrogate cannot even be stored as UTF-8), or None."""
    if not isinstance(value, str):
        return None
    cleaned = " ".join(value.split())
    if not cleaned.isprintable():  # fast path: most text has nothing to remove
        cleaned = " ".join("".join(ch for ch in cleaned if unicodedata.category(ch)[0] != "C").split())
    return cleaned or None


LARGEST_INTEGER = 10**15  # larger than any id, count or age a source has; bigger means garbage


def integer(value: Any) -> int | None:
    """An int from an int, an integral float or a string of ASCII digits, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer() and abs(value) <= LARGEST_INTEGER:
        value = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 15:
        value = int(value.strip())
    if isinstance(value, int) and abs(value) <= LARGEST_INTEGER:
        return value
    return None


def as_list(value: Any, field: str, case_id: str) -> list:
    """``value`` if it is a list; None or missing gives []; anything else is dropped with a warning."""
    if isinstance(value, list):
        return value
    if value is not None:
        log.warning("case %s: ignoring %s, a %s instead of a list", case_id, field, type(value).__name__)
    return []


def age_range(low: Any, high: Any, field: str, case_id: str) -> AgeRange | None:
    """An ``AgeRange`` from two optional ends, or None with a warning when they make no sense."""
    try:
        return AgeRange.of(integer(low), integer(high))
    except ValidationError as error:  # out of 0..130, or min above max
        reason = "; ".join(e["msg"] for e in error.errors())[:160]
        log.warning("case %s: ignoring unusable %s (%s)", case_id, field, reason)
        return None


def parse_datetime(value: Any, field: str, case_id: str) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        log.warning("case %s: ignoring unreadable %s %.80r", case_id, field, value)
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def parse_date(value: Any, field: str, case_id: str) -> date | None:
    """A ``YYYY-MM-DD`` date (a time part after it is ignored), or None with a warning."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        return datetime.strptime(value.strip()[:10], "%Y-%m-%d").date()
    except ValueError:
        log.warning("case %s: ignoring unreadable %s %.80r", case_id, field, value)
        return None


def sex_of(value: Any) -> str:
    word = (text(value) or "").lower()
    return {"male": "male", "m": "male", "female": "female", "f": "female"}.get(word, "unknown")
