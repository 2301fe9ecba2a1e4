"""NamUs missing persons (www.namus.gov/api, undocumented; see docs/ingest.md).

Listing: ``GET /api/CaseSets/NamUs/States``, then per state ``POST .../MissingPersons/Search``
with an ``IsIn`` predicate on ``stateOfLastContact`` (the only operator that works),
projections ``namus2Number`` and ``modifiedDateTime``, paged with take/skip.
Detail: ``GET .../MissingPersons/Cases/{n}`` (404 = removed or unpublished).
Photos: ``images[].files.original.href`` (built from ``identityId`` when absent).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterator
from typing import Any

from sync_service.http import HttpError, PoliteClient
from sync_service.sources.base import (
    MAX_CASE_BYTES,
    SourceAdapter,
    age_range,
    as_list,
    dig,
    integer,
    parse_date,
    parse_datetime,
    sex_of,
    text,
)
from sync_service.sources.records import AgencyContact, CaseSummary, MalformedCase, PersonRecord, PhotoRef

log = logging.getLogger(__name__)

# The 55 entries GET /api/CaseSets/NamUs/States returns: (name, code). Scopes accept either.
NAMUS_STATES = [
    ("Alabama", "AL"), ("Alaska", "AK"), ("Arizona", "AZ"), ("Arkansas", "AR"), ("California", "CA"),
    ("Colorado", "CO"), ("Connecticut", "CT"), ("Delaware", "DE"), ("District of Columbia", "DC"),
    ("Florida", "FL"), ("Georgia", "GA"), ("Guam", "GU"), ("Hawaii", "HI"), ("Idaho", "ID"), ("Illinois", "IL"),
    ("Indiana", "IN"), ("Iowa", "IA"), ("Kansas", "KS"), ("Kentucky", "KY"), ("Louisiana", "LA"), ("Maine", "ME"),
    ("Maryland", "MD"), ("Massachusetts", "MA"), ("Michigan", "MI"), ("Minnesota", "MN"), ("Mississippi", "MS"),
    ("Missouri", "MO"), ("Montana", "MT"), ("Nebraska", "NE"), ("Nevada", "NV"), ("New Hampshire", "NH"),
    ("New Jersey", "NJ"), ("New Mexico", "NM"), ("New York", "NY"), ("North Carolina", "NC"),
    ("North Dakota", "ND"), ("Northern Mariana Islands", "MP"), ("Ohio", "OH"), ("Oklahoma", "OK"),
    ("Oregon", "OR"), ("Pennsylvania", "PA"), ("Puerto Rico", "PR"), ("Rhode Island", "RI"),
    ("South Carolina", "SC"), ("South Dakota", "SD"), ("Tennessee", "TN"), ("Texas", "TX"), ("Utah", "UT"),
    ("Vermont", "VT"), ("Virgin Islands", "VI"), ("Virginia", "VA"), ("Washington", "WA"),
    ("West Virginia", "WV"), ("Wisconsin", "WI"), ("Wyoming", "WY"),
]  # fmt: skip


API = "/api/CaseSets/NamUs"
CASE_SET = "MissingPersons"
# Photo categories that show the face (yokeay/baobeihuijia's PORTRAIT_CATEGORIES);
# "Other" is often a tattoo, a vehicle or a poster.
PORTRAIT_CATEGORIES = frozenset({"FacialCaseId", "ActualPhoto", "AgeProgression", "Composite"})
# Searches asking for more than ~2,000 rows time out (docs/ingest.md); California's 3732 cases take 4 pages.
PAGE_SIZE = 1000
CASE_NUMBER = re.compile(r"^(?:MP)?(\d{1,9})$", re.IGNORECASE)
# NamUs is a US system: agency phone numbers are national (NANP) numbers, "3407725605".
PHONE_REGION = "US"
MAX_AGENCIES = 5  # real cases list one or two


def case_number(case_id: str | int) -> int:
    """``MP4351``, ``4351`` or 4351 -> 4351."""
    match = CASE_NUMBER.match(str(case_id).strip())
    if not match:
        raise ValueError(f"not a NamUs missing-person case id: {case_id!r} (expected e.g. MP4351 or 4351)")
    return int(match.group(1))


def parse_case(
    data: Any, base_url: str = "https://www.namus.gov", categories: frozenset[str] | None = PORTRAIT_CATEGORIES
) -> PersonRecord:
    """A ``PersonRecord`` from a NamUs ``Cases/{id}`` body (2025 or the older flat shape).

    ``categories`` None keeps every public photo. Raises ``MalformedCase``.
    """
    if not isinstance(data, dict):
        raise MalformedCase("namus", "?", f"case body is {type(data).__name__}, not an object")
    number = integer(data.get("id"))
    label = str(data.get("idFormatted") or data.get("id") or "?")
    if number is None:
        raise MalformedCase("namus", label, "no numeric 'id'")
    case_id = f"MP{number}"
    subject = data.get("subjectIdentification")
    if not isinstance(subject, dict):
        raise MalformedCase("namus", case_id, "no 'subjectIdentification' (not a missing-person case?)")
    name = " ".join(filter(None, (text(subject.get(k)) for k in ("firstName", "middleName", "lastName"))))
    if not name:
        raise MalformedCase("namus", case_id, "no name in 'subjectIdentification'")
    images = data.get("images", [])
    if not isinstance(images, list):
        raise MalformedCase("namus", case_id, f"'images' is {type(images).__name__}, not a list")

    sighting = data.get("sighting") if isinstance(data.get("sighting"), dict) else {}
    try:
        record = PersonRecord(
            source="namus",
            case_id=case_id,
            name=name,
            sex=sex_of(dig(data, "subjectDescription", "sex", "name")),
            age_now=age_range(subject.get("currentMinAge"), subject.get("currentMaxAge"), "current age", case_id),
            age_when_missing=age_range(
                subject.get("computedMissingMinAge", subject.get("missingMinAge")),
                subject.get("computedMissingMaxAge", subject.get("missingMinAge")),
                "age when missing",
                case_id,
            ),
            last_seen_date=parse_date(sighting.get("date"), "sighting.date", case_id),
            last_seen_place=_place(sighting),
            modified=parse_datetime(data.get("modifiedDateTime"), "modifiedDateTime", case_id),
            resolved=bool(data.get("caseIsResolved"))
            or dig(data, "publicationStatus", "name") not in (None, "Published"),
            photos=tuple(_photos(images, number, base_url, categories, case_id)),
            url=f"{base_url.rstrip('/')}/{CASE_SET}/Case#/{number}",
            agencies=_agencies(data, case_id),
        )
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise MalformedCase("namus", case_id, str(error)) from None
    return record


def _place(sighting: dict) -> str | None:
    address = sighting.get("address")
    if isinstance(address, dict):  # 2024/2025 shape
        city = text(address.get("city"))
        state = text(dig(address, "state", "displayName")) or text(dig(address, "state", "name"))
    else:  # older flat shape: city, state (a string), stateDisplayName
        city = text(sighting.get("city"))
        state = text(sighting.get("stateDisplayName")) or text(sighting.get("state"))
    place = ", ".join(filter(None, (city, state)))
    return place or text(dig(sighting, "publicGeolocation", "formattedAddress"))


def _agencies(data: dict, case_id: str) -> tuple[AgencyContact, ...]:
    """``investigatingAgencies[]``: the agency's name, and its phone and e-mail from
    ``selection.agency`` (the agency NamUs knows) or ``properties.agency`` (as the case
    entered it). A person's own contact (``.contact``) is not kept. A phone number or
    address that does not validate is dropped with a warning; the agency stays."""
    # Here, not at the top: the gallery build imports this module for NAMUS_STATES and is
    # packaged without the contact validators.
    from sync_service.sources.contacts import email_address, phone_e164

    primary = data.get("primaryInvestigatingAgency") if isinstance(data.get("primaryInvestigatingAgency"), dict) else {}
    primary_id, primary_name = integer(primary.get("id")), text(primary.get("name"))
    agencies: list[AgencyContact] = []
    for entry in as_list(data.get("investigatingAgencies"), "investigatingAgencies", case_id)[:MAX_AGENCIES]:
        if not isinstance(entry, dict):
            continue
        known = dig(entry, "selection", "agency") if isinstance(dig(entry, "selection", "agency"), dict) else {}
        entered = dig(entry, "properties", "agency") if isinstance(dig(entry, "properties", "agency"), dict) else {}
        name = text(entry.get("name")) or text(known.get("name")) or text(entered.get("name"))
        if not name:
            continue
        raw_phone = known.get("phone") or entered.get("phone")
        raw_email = known.get("email") or entered.get("email")
        phone, email = phone_e164(raw_phone, PHONE_REGION), email_address(raw_email)
        if raw_phone and phone is None:
            log.warning("case %s: agency phone %.40r refused (not a valid number that takes SMS)", case_id, raw_phone)
        if raw_email and email is None:
            log.warning("case %s: agency e-mail %.60r refused (not a plain address)", case_id, raw_email)
        agency_id = integer(known.get("id"))
        is_primary = (primary_id is not None and primary_id != 0 and agency_id == primary_id) or (
            primary_name is not None and primary_name == name
        )
        agencies.append(AgencyContact(name=name[:200], phone=phone, email=email, primary=is_primary))
    return tuple(agencies)


def _photos(
    images: list, number: int, base_url: str, categories: frozenset[str] | None, case_id: str
) -> Iterator[PhotoRef]:
    for image in images:
        if not isinstance(image, dict):
            log.warning("case %s: ignoring an image entry that is %s", case_id, type(image).__name__)
            continue
        if image.get("isPublic") is False:
            continue
        category = text(dig(image, "category", "name")) or ""
        # Uncategorised photos are kept: the gallery builder's face detector is the real filter.
        if categories is not None and category and category not in categories:
            continue
        identity = integer(image.get("identityId"))
        href = text(dig(image, "files", "original", "href"))
        if identity is None:
            log.warning("case %s: ignoring an image without identityId", case_id)
            continue
        if href is None:  # the Search projection has no hrefs: build it as the web app does
            href = f"{API}/{CASE_SET}/Cases/{number}/Images/{identity}/Original"
        yield PhotoRef(
            photo_id=str(identity),
            url=href if "://" in href else base_url.rstrip("/") + "/" + href.lstrip("/"),
            category=category,
            mime_type=text(dig(image, "files", "original", "mimeType")),
            caption=text(image.get("caption")),
        )


class NamusAdapter(SourceAdapter):
    name = "namus"
    default_photo_hosts = ("www.namus.gov",)  # images[].files.original.href is relative to it

    def __init__(
        self,
        base_url: str = "https://www.namus.gov",
        client: PoliteClient | None = None,
        categories: frozenset[str] | None = PORTRAIT_CATEGORIES,
        page_size: int = PAGE_SIZE,
        photo_hosts: Collection[str] | None = None,
    ) -> None:
        super().__init__(base_url, client, photo_hosts)
        self.categories = categories
        self.page_size = page_size
        self.order: list[dict] | None = [{"field": "namus2Number", "direction": "Ascending"}]

    def states(self) -> list[dict]:
        states = self.client.get_json(self.url(f"{API}/States"))
        if not isinstance(states, list) or not all(isinstance(s, dict) and text(s.get("name")) for s in states):
            raise HttpError(f"{API}/States: expected a list of objects with 'name'", self.url(f"{API}/States"))
        return states

    def list_scopes(self, wanted: list[str] | None = None) -> list[str]:
        states = self.states()
        if not wanted:
            return [s["name"] for s in states]
        by_label = {}
        for state in states:
            for label in (state.get("name"), state.get("displayName")):
                if text(label):
                    by_label[label.strip().lower()] = state["name"]
        unknown = [w for w in wanted if w.strip().lower() not in by_label]
        if unknown:
            raise ValueError(f"unknown NamUs state(s) {unknown}; known: {sorted(s['name'] for s in states)}")
        return list(dict.fromkeys(by_label[w.strip().lower()] for w in wanted))

    def list_scope(self, scope: str) -> Iterator[CaseSummary]:
        # Paging an index that changes under us can skip a case, and a skipped case
        # would look vanished: check the distinct count against the reported total.
        for attempt in (1, 2):
            rows, total = self._search_state(scope)
            if total is None or len(rows) >= total:
                break
            log.warning("NamUs search %s: %d distinct cases of %d reported (try %d)", scope, len(rows), total, attempt)
        else:
            self.incomplete[scope] = f"{len(rows)} distinct cases of {total} reported, twice"
        yield from rows.values()

    def _search_state(self, scope: str) -> tuple[dict[str, CaseSummary], int | None]:
        url = self.url(f"{API}/{CASE_SET}/Search")
        rows: dict[str, CaseSummary] = {}
        skip, total = 0, None
        while True:
            body = {
                "take": self.page_size,
                "skip": skip,
                "projections": ["namus2Number", "modifiedDateTime"],
                "predicates": [{"field": "stateOfLastContact", "operator": "IsIn", "values": [scope]}],
            }
            if self.order is not None:
                body["orderSpecifications"] = self.order  # a stable order keeps pages from overlapping
            try:
                page = self.client.post_json(url, body)
            except HttpError as error:
                if error.status != 400 or self.order is None:
                    raise
                # Ordering is not a documented feature: do without it rather than fail the run.
                log.warning("NamUs search refused orderSpecifications (%s); paging without", error)
                self.order = None
                continue
            results = page.get("results") if isinstance(page, dict) else None
            if not isinstance(results, list):
                raise HttpError(f"POST {url} ({scope}): response has no 'results' list", url)
            for row in results:
                number = integer(row.get("namus2Number")) if isinstance(row, dict) else None
                if number is None:
                    log.warning("NamUs search (%s): ignoring a result without namus2Number: %.100r", scope, row)
                    continue
                rows[f"MP{number}"] = CaseSummary(
                    case_id=f"MP{number}",
                    modified=parse_datetime(row.get("modifiedDateTime"), "modifiedDateTime", f"MP{number}"),
                    scope=scope,
                )
            skip += len(results)
            total = integer(page.get("count"))
            if not results or (total is not None and skip >= total):
                return rows, total

    def fetch_case(self, case_id: str) -> PersonRecord | None:
        url = self.url(f"{API}/{CASE_SET}/Cases/{case_number(case_id)}")
        response = self.client.get(url, max_bytes=MAX_CASE_BYTES)
        if response.status_code == 404:
            return None
        data = self.client.json_of(response, "GET", url)
        return parse_case(data, self.base_url, self.categories)
