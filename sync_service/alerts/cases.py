"""Fresh case details for an alert, with a hard time budget and a fallback.

The source API (NamUs first) is asked for the case when the alert is handled, so the
SMS carries today's facts; if it is slow, down or says nothing, the alert goes out
on time with what the device sent (name, source and case id) and says so.
"""

from __future__ import annotations

import concurrent.futures
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from sync_service.alerts.sms import clean_text
from sync_service.sources.records import AgencyContact

if TYPE_CHECKING:
    from sync_service.sources.records import PersonRecord

log = logging.getLogger("mpd-alerts")

# (source, case_id) -> the case, or None when the source no longer has it.
CaseFetcher = Callable[[str, str], "PersonRecord | None"]

SOURCE_LABELS = {"namus": "NamUs", "fbi": "FBI", "interpol": "Interpol"}


@dataclass(frozen=True)
class CaseDetails:
    name: str
    sex: str = ""  # "F", "M" or ""
    age_now: str = ""
    age_missing: str = ""
    last_seen_date: date | None = None
    last_seen_place: str = ""
    link: str = ""
    resolved: bool = False
    fresh: bool = False  # True when the source API answered in time
    agencies: tuple[AgencyContact, ...] = ()  # investigating agencies (contacts validated at parse)


def case_link(source: str, case_id: str) -> str:
    """The public web page of a case, built from its id when the source did not give one."""
    if source == "namus":
        number = case_id.removeprefix("MP").removeprefix("mp")
        return f"https://www.namus.gov/MissingPersons/Case#/{number}" if number.isdigit() else ""
    if source == "interpol":
        return f"https://www.interpol.int/How-we-work/Notices/View-Yellow-Notices#{case_id.replace('-', '/')}"
    return ""


def _age(age_range: Any) -> str:
    if age_range is None or age_range.min is None:
        return ""
    return str(age_range.min) if age_range.max in (None, age_range.min) else f"{age_range.min}-{age_range.max}"


_WEB_LINK = re.compile(r"^https://[A-Za-z0-9.-]+(?::\d+)?/[\x21-\x7e]{0,160}$")


def details_from_record(record: PersonRecord, source: str, case_id: str) -> CaseDetails:
    """What the source says, cleaned: it is text from outside, on its way to a person."""
    link = record.url if record.url and _WEB_LINK.match(record.url) else case_link(source, case_id)
    return CaseDetails(
        name=clean_text(record.name, 80) or "name in case file",
        sex={"female": "F", "male": "M"}.get(record.sex, ""),
        age_now=_age(record.age_now),
        age_missing=_age(record.age_when_missing),
        last_seen_date=record.last_seen_date,
        last_seen_place=clean_text(record.last_seen_place or "", 80),
        link=link,
        resolved=record.resolved,
        fresh=True,
        agencies=clean_agencies(record.agencies),
    )


def clean_agencies(agencies: tuple[AgencyContact, ...] | list[AgencyContact]) -> tuple[AgencyContact, ...]:
    """Agency names are source text on their way to a reviewer: cleaned like every other
    field. Phone and e-mail were validated when the case was parsed (sources/contacts.py)."""
    return tuple(
        agency.model_copy(update={"name": clean_text(agency.name, 80) or "investigating agency"}) for agency in agencies
    )


def fallback_details(source: str, case_id: str, gallery_name: str) -> CaseDetails:
    """The name from the gallery the cloud built (never the device's), and the case's page."""
    return CaseDetails(name=clean_text(gallery_name, 80) or "name in case file", link=case_link(source, case_id))


class CaseLookup:
    """Asks the source for a case, giving up after ``timeout`` seconds (wall clock)."""

    def __init__(self, fetch: CaseFetcher | None, timeout: float) -> None:
        self.fetch = fetch
        self.timeout = timeout
        # A hung source keeps its worker thread until the adapter's own socket timeout;
        # the alert does not wait for it.
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="case-lookup")

    def details(self, source: str, case_id: str, gallery_name: str = "") -> CaseDetails:
        """Fresh details of a case (canonical id), or the gallery's name when the source fails."""
        fallback = fallback_details(source, case_id, gallery_name)
        if self.fetch is None:
            return fallback
        where = {"source": source, "case_id": case_id, "timeout_s": self.timeout}
        future = self._pool.submit(self.fetch, source, case_id)
        try:
            record = future.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            log.warning("case lookup timed out, using the gallery's data", extra=where)
            return fallback
        except Exception as error:  # any source failure must not stop the alert
            log.warning("case lookup failed, using the gallery's data", extra=where | {"error": repr(error)})
            return fallback
        if record is None:
            log.warning("source has no such case (removed or unpublished?)", extra=where)
            return fallback
        return details_from_record(record, source, case_id)
