"""FBI Wanted (api.fbi.gov): the missing-person posters among all wanted items.

Listing: ``GET /wanted/v1/list?page=N&pageSize=N`` until ``items`` is empty; the
items are already full records, so they are kept for ``fetch_case`` (no second
request). One person: ``GET /@wanted-person/{uid}``. There is no server-side
subject filter, so missing persons are picked by ``subjects`` (case-insensitive)
or ``poster_classification == "missing"``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection, Iterator
from datetime import date, datetime
from typing import Any

from sync_service.http import HttpError, PoliteClient
from sync_service.sources.base import (
    MAX_CASE_BYTES,
    SourceAdapter,
    age_range,
    as_list,
    parse_datetime,
    sex_of,
    text,
)
from sync_service.sources.records import SAFE_ID, CaseSummary, MalformedCase, PersonRecord, PhotoRef

log = logging.getLogger(__name__)

MISSING_SUBJECTS = frozenset(
    s.lower()
    for s in (
        "ViCAP Missing Persons",
        "Kidnappings and Missing Persons",
        "Kidnappings/Missing Persons",
        "Parental Kidnapping",
        "ECAP",
        "Endangered Child Alert Program",
    )
)
RESOLVED_STATUSES = frozenset({"recovered", "located", "found", "deceased", "captured"})
PAGE_SIZE = 50  # the 2026 reference says 50 is the maximum (unverified); a smaller cap only adds pages
MAX_PAGES = 500  # about 25000 items: far above the 964-1147 ever seen


def is_missing_person(item: dict) -> bool:
    subjects = item.get("subjects") or []
    if not isinstance(subjects, list):
        return False
    if any(isinstance(s, str) and s.strip().lower() in MISSING_SUBJECTS for s in subjects):
        return True
    return str(item.get("poster_classification") or "").lower() == "missing"


def _parse_fbi_date(value: str) -> date | None:
    for fmt in ("%B %d, %Y", "%B %Y", "%b %d, %Y", "%m/%d/%Y", "%Y-%m-%d", "%Y"):
        try:
            return datetime.strptime(value.strip(), fmt).date()
        except ValueError:
            continue
    return None


def _age_on(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def photo_id_for(url: str) -> str:
    """FBI photos have no ids; a digest of the URL is stable across runs and orderings."""
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def parse_item(item: Any) -> PersonRecord:
    """A ``PersonRecord`` from one FBI Wanted item. Raises ``MalformedCase``."""
    if not isinstance(item, dict):
        raise MalformedCase("fbi", "?", f"item is {type(item).__name__}, not an object")
    uid = text(item.get("uid"))
    if uid is None or not SAFE_ID.match(uid):
        raise MalformedCase("fbi", str(item.get("uid")), "no usable 'uid'")
    title = text(item.get("title"))
    if title is None:
        raise MalformedCase("fbi", uid, "no 'title'")
    # ViCAP titles are "NAME - CITY, STATE"; the description is "date\r\nplace".
    name, _, title_place = title.partition(" - ")
    description = item.get("description") if isinstance(item.get("description"), str) else ""
    lines = [line.strip() for line in description.splitlines() if line.strip()]
    seen_date = _parse_fbi_date(lines[0]) if lines else None
    place = lines[1] if len(lines) > 1 else (lines[0] if lines and seen_date is None else None)
    place = place or (title_place.title() if title_place else None)

    born = None
    for value in as_list(item.get("dates_of_birth_used"), "dates_of_birth_used", uid):
        if isinstance(value, str) and (born := _parse_fbi_date(value)):
            break
    age_when_missing = age_range(item.get("age_min"), item.get("age_max"), "age_min/age_max", uid)
    if age_when_missing is None and born and seen_date:
        age_when_missing = age_range(_age_on(born, seen_date), _age_on(born, seen_date), "age when missing", uid)
    age_now = age_range(_age_on(born, date.today()), _age_on(born, date.today()), "age now", uid) if born else None

    try:
        photos = []
        for image in as_list(item.get("images"), "images", uid):
            url = text(image.get("original")) if isinstance(image, dict) else None
            if url:
                photos.append(PhotoRef(photo_id=photo_id_for(url), url=url, caption=text(image.get("caption"))))
        return PersonRecord(
            source="fbi",
            case_id=uid,
            name=name.strip().title(),
            sex=sex_of(item.get("sex")),
            age_now=age_now,
            age_when_missing=age_when_missing,
            last_seen_date=seen_date,
            last_seen_place=text(place),
            modified=parse_datetime(item.get("modified"), "modified", uid),
            resolved=str(item.get("status") or "").lower() in RESOLVED_STATUSES,
            photos=tuple(photos),
            url=text(item.get("url")),
        )
    except ValueError as error:
        raise MalformedCase("fbi", uid, str(error)) from None


class FbiAdapter(SourceAdapter):
    name = "fbi"
    default_photo_hosts = ("www.fbi.gov",)  # images[].original: https://www.fbi.gov/wanted/.../@@images/image

    def __init__(
        self,
        base_url: str = "https://api.fbi.gov",
        client: PoliteClient | None = None,
        page_size: int = PAGE_SIZE,
        photo_hosts: Collection[str] | None = None,
    ) -> None:
        super().__init__(base_url, client, photo_hosts)
        self.page_size = page_size
        self._items: dict[str, dict] = {}  # uid -> item from the current listing

    def list_scope(self, scope: str) -> Iterator[CaseSummary]:
        for page in range(1, MAX_PAGES + 1):
            url = self.url(f"/wanted/v1/list?page={page}&pageSize={self.page_size}")
            data = self.client.get_json(url)
            items = data.get("items") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise HttpError(f"GET {url}: response has no 'items' list", url)
            if not items:
                return
            for item in items:
                if not isinstance(item, dict) or not is_missing_person(item):
                    continue
                uid = text(item.get("uid"))
                if uid is None or not SAFE_ID.match(uid):
                    log.warning("FBI list page %d: ignoring an item without a usable uid: %.80r", page, item.get("uid"))
                    continue
                self._items[uid] = item
                yield CaseSummary(case_id=uid, modified=parse_datetime(item.get("modified"), "modified", uid))
        log.warning("FBI listing stopped at %d pages", MAX_PAGES)

    def fetch_case(self, case_id: str) -> PersonRecord | None:
        item = self._items.pop(case_id, None)
        if item is None:
            if not SAFE_ID.match(case_id) or re.search(r"[/?#]", case_id):
                raise ValueError(f"not an FBI uid: {case_id!r}")
            url = self.url(f"/@wanted-person/{case_id}")
            response = self.client.get(url, max_bytes=MAX_CASE_BYTES)
            if response.status_code == 404:
                return None
            item = self.client.json_of(response, "GET", url)
        return parse_item(item)
