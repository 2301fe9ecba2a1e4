"""Interpol yellow notices (ws-public.interpol.int): missing persons worldwide.

Listing: ``GET /notices/v1/yellow?resultPerPage=160&page=N``. A query only ever
exposes its first 160 results, so a larger total is split by ``sexId`` and then by
``ageMin``/``ageMax`` windows until each part fits. Detail:
``GET /notices/v1/yellow/{id}`` and its ``/images`` list. Notices carry no modified
time, so each listed notice is fetched again; photos are only downloaded when new.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator
from datetime import date
from typing import Any
from urllib.parse import urlencode

from sync_service.http import HttpError, PoliteClient
from sync_service.sources.base import MAX_CASE_BYTES, SourceAdapter, age_range, as_list, dig, integer, sex_of, text
from sync_service.sources.records import SAFE_ID, AgeRange, CaseSummary, MalformedCase, PersonRecord, PhotoRef

log = logging.getLogger(__name__)

WINDOW = 160  # results a single query exposes, whatever the paging
NOTICE_ID = re.compile(r"^\d{4}-\d{1,9}$")
WEB_PAGE = "https://www.interpol.int/How-we-work/Notices/View-Yellow-Notices#"


def notice_id(entity_id: str) -> str:
    """``2021/75051`` -> ``2021-75051`` (the id used in URLs and as our case id)."""
    value = entity_id.strip().replace("/", "-", 1)
    if not NOTICE_ID.match(value):
        raise ValueError(f"not an Interpol notice id: {entity_id!r} (expected e.g. 2021/75051)")
    return value


def _interpol_date(value: Any) -> tuple[date | None, bool]:
    """``YYYY/MM/DD`` (or ``YYYY/MM``, ``YYYY``) -> (date, exact?)."""
    parts = str(value or "").strip().split("/")
    if not parts[0].isdigit():
        return None, False
    try:
        numbers = [int(p) for p in parts[:3]]
        return date(numbers[0], *(numbers[1:] + [1, 1])[:2]), len(numbers) == 3
    except (ValueError, OverflowError):  # not digits, out of range, or far too many of them
        return None, False


def parse_list_page(data: Any) -> tuple[int, list[CaseSummary]]:
    """(total, summaries) from a notices list response. Raises ``ValueError`` if it is not one."""
    notices = dig(data, "_embedded", "notices")
    if not isinstance(notices, list):
        raise ValueError("response has no _embedded.notices list")
    summaries = []
    for item in notices:
        entity = text(item.get("entity_id")) if isinstance(item, dict) else None
        try:
            summaries.append(CaseSummary(case_id=notice_id(entity or "")))
        except ValueError as error:
            log.warning("Interpol list: ignoring a notice: %s", error)
    return integer(data.get("total")) or 0, summaries


def _readable(place: str | None) -> str | None:
    """Interpol writes places in capitals (``KARLSRUHE``); an SMS reads better without."""
    return place.title() if place and place.isupper() else place


def _country_code(value: str | None) -> str | None:
    """Interpol's ``country`` (where the person went missing) is an ISO alpha-2 code; anything else is dropped."""
    return value.upper() if value and len(value) == 2 and value.isalpha() else None


def parse_images(data: Any, images_url: str) -> list[PhotoRef]:
    """Photos from a ``/notices/v1/yellow/{id}/images`` response (bad entries are skipped)."""
    pictures = []
    for image in as_list(dig(data, "_embedded", "images"), "_embedded.images", images_url):
        picture = text(str(image.get("picture_id") or "")) if isinstance(image, dict) else None
        if not picture or not SAFE_ID.match(picture):
            log.warning("Interpol images %s: ignoring an entry without a usable picture_id", images_url)
            continue
        href = text(dig(image, "_links", "self", "href")) or f"{images_url.rstrip('/')}/{picture}"
        pictures.append(PhotoRef(photo_id=picture, url=href))
    return pictures


def parse_notice(data: Any, pictures: list[PhotoRef] | None = None) -> PersonRecord:
    """A ``PersonRecord`` from a notice (detail or list item). Raises ``MalformedCase``."""
    if not isinstance(data, dict):
        raise MalformedCase("interpol", "?", f"notice is {type(data).__name__}, not an object")
    entity = text(data.get("entity_id"))
    try:
        case_id = notice_id(entity or "")
    except ValueError as error:
        raise MalformedCase("interpol", str(entity), str(error)) from None
    name = " ".join(filter(None, (text(data.get("forename")), text(data.get("name"))))).title()
    if not name:
        raise MalformedCase("interpol", case_id, "no forename or name")
    born, exact_birth = _interpol_date(data.get("date_of_birth"))
    event, _ = _interpol_date(data.get("date_of_event"))

    def age_on(day: date) -> AgeRange | None:
        if born is None:
            return None
        years = day.year - born.year
        if exact_birth:
            years -= (day.month, day.day) < (born.month, born.day)
            return age_range(years, years, "age from date_of_birth", case_id)
        return age_range(max(0, years - 1), years, "age from date_of_birth", case_id)  # birth month or day unknown

    try:
        if pictures is None:  # a list item: the thumbnail is the first photo
            thumbnail = text(dig(data, "_links", "thumbnail", "href"))
            pictures = [PhotoRef(photo_id=thumbnail.rstrip("/").rsplit("/", 1)[-1], url=thumbnail)] if thumbnail else []
        return PersonRecord(
            source="interpol",
            case_id=case_id,
            name=name,
            sex=sex_of(data.get("sex_id")),
            age_now=age_on(date.today()),
            age_when_missing=age_on(event) if event else None,
            last_seen_date=event,
            last_seen_place=", ".join(filter(None, (_readable(text(data.get("place"))), text(data.get("country")))))
            or None,
            country=_country_code(text(data.get("country"))),
            photos=tuple(pictures),
            url=WEB_PAGE + case_id,
        )
    except ValueError as error:
        raise MalformedCase("interpol", case_id, str(error)) from None


class InterpolAdapter(SourceAdapter):
    name = "interpol"
    default_photo_hosts = ("ws-public.interpol.int",)  # .../notices/v1/yellow/{id}/images/{picture_id}

    def __init__(
        self,
        base_url: str = "https://ws-public.interpol.int",
        client: PoliteClient | None = None,
        photo_hosts: Collection[str] | None = None,
    ) -> None:
        super().__init__(base_url, client, photo_hosts)
        # Interpol's WAF is kinder to requests that say where they come from.
        self.client.session.headers.setdefault("Referer", "https://www.interpol.int/")

    def _query(self, filters: dict[str, Any], page: int) -> tuple[int, list[CaseSummary], bool]:
        url = self.url("/notices/v1/yellow?" + urlencode({**filters, "resultPerPage": WINDOW, "page": page}))
        data = self.client.get_json(url)
        try:
            total, summaries = parse_list_page(data)
        except ValueError as error:
            raise HttpError(f"GET {url}: {error}", url) from None
        return total, summaries, bool(dig(data, "_links", "next"))

    def _crawl(self, filters: dict[str, Any]) -> Iterator[CaseSummary]:
        total, summaries, more = self._query(filters, 1)
        if not filters:
            self._total = total
        yield from summaries  # what this query shows counts, however the parts below fare
        if total <= WINDOW:
            page = 1
            while more and page * WINDOW < total:
                page += 1
                _, summaries, more = self._query(filters, page)
                yield from summaries
            return
        if "sexId" not in filters:
            for sex in ("F", "M", "U"):
                yield from self._crawl({**filters, "sexId": sex})
            return
        low, high = filters.get("ageMin", 0), filters.get("ageMax", 120)
        if low < high:
            middle = (low + high) // 2
            yield from self._crawl({**filters, "ageMin": low, "ageMax": middle})
            yield from self._crawl({**filters, "ageMin": middle + 1, "ageMax": high})
            return
        log.warning("Interpol: %d notices for %s, only the first %d are visible", total, filters, WINDOW)

    def list_scope(self, scope: str) -> Iterator[CaseSummary]:
        seen: set[str] = set()
        self._total = 0
        for summary in self._crawl({}):
            if summary.case_id not in seen:
                seen.add(summary.case_id)
                yield summary
        if len(seen) < self._total:  # e.g. notices without a birth date, which no age window shows
            self.incomplete[scope] = f"{len(seen)} of {self._total} notices reachable through the 160-result window"
            log.warning("Interpol: %s", self.incomplete[scope])

    def fetch_case(self, case_id: str) -> PersonRecord | None:
        url = self.url(f"/notices/v1/yellow/{notice_id(case_id)}")
        response = self.client.get(url, max_bytes=MAX_CASE_BYTES)
        if response.status_code == 404:
            return None
        data = self.client.json_of(response, "GET", url)
        images_url = text(dig(data, "_links", "images", "href")) or url + "/images"
        # The link comes from the body: it may point only at the API itself.
        images = self.client.get(self.url(images_url), max_bytes=MAX_CASE_BYTES, allowed_hosts=self.api_hosts)
        pictures: list[PhotoRef] = []
        if images.ok:
            pictures = [
                p.model_copy(update={"url": self.url(p.url)})
                for p in parse_images(self.client.json_of(images, "GET", images_url), images_url)
            ]
        elif images.status_code != 404:
            raise HttpError(f"GET {images_url}: HTTP {images.status_code}", images_url, images.status_code)
        return parse_notice(data, pictures)
