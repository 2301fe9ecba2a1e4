"""The normalised person record every source adapter yields (docs/ingest.md).

Sources disagree on almost everything (NamUs nests, FBI flattens, Interpol uses
YYYY/MM/DD); adapters map their own shape into ``PersonRecord`` so the store, the
gallery builder and the alert handler only ever see this one.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

SourceName = Literal["namus", "fbi", "interpol"]
SOURCES: tuple[str, ...] = ("namus", "fbi", "interpol")
Sex = Literal["male", "female", "unknown"]

# Case and photo ids become parts of store keys and URLs: keep them to a safe alphabet.
SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SafeId = Annotated[str, Field(pattern=SAFE_ID.pattern)]


def as_utc(value: datetime | None) -> datetime | None:
    # NamUs gives naive timestamps; they are only compared with themselves, so UTC is fine.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


class AgeRange(BaseModel):
    """An age span in whole years; sources often give a range (``min == max`` when exact)."""

    model_config = ConfigDict(frozen=True)

    min: Annotated[int, Field(ge=0, le=130)] | None = None
    max: Annotated[int, Field(ge=0, le=130)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AgeRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"age range min {self.min} is above max {self.max}")
        return self

    @classmethod
    def of(cls, low: int | None, high: int | None) -> AgeRange | None:
        """A range from two optional ends, or None when both are unknown."""
        if low is None and high is None:
            return None
        return cls(min=low if low is not None else high, max=high if high is not None else low)


class PhotoRef(BaseModel):
    """Where a case photo can be fetched, as the source describes it (not yet downloaded)."""

    model_config = ConfigDict(frozen=True)

    photo_id: SafeId
    url: str  # absolute
    category: str = ""  # e.g. NamUs "FacialCaseId", "ActualPhoto", "AgeProgression"
    mime_type: str | None = None  # as declared by the source; the true type comes from the bytes
    caption: str | None = None


# What a validated contact looks like (sources/contacts.py does the validating; these
# patterns only make sure nothing else is ever stored or loaded as one).
E164 = r"^\+[1-9][0-9]{6,14}$"
PLAIN_EMAIL = r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$"


class AgencyContact(BaseModel):
    """An agency investigating the case, and how to reach it, when the source says.

    Kept in the stored case record (the ingest store) and in review records; never in the
    gallery's person table that devices get."""

    model_config = ConfigDict(frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=200)]
    phone: Annotated[str, Field(pattern=E164)] | None = None
    email: Annotated[str, Field(max_length=254, pattern=PLAIN_EMAIL)] | None = None
    primary: bool = False  # the source names it the case's primary investigating agency


class PersonRecord(BaseModel):
    """One missing person's case, normalised across sources."""

    model_config = ConfigDict(frozen=True)

    source: SourceName
    case_id: SafeId  # the source's own case id: NamUs "MP71320", FBI uid, Interpol "2021-75051"
    name: Annotated[str, Field(min_length=1, max_length=200)]
    sex: Sex = "unknown"
    age_now: AgeRange | None = None
    age_when_missing: AgeRange | None = None
    last_seen_date: date | None = None
    last_seen_place: str | None = None
    # ISO 3166-1 alpha-2 of where the person went missing, when the source says (Interpol);
    # NamUs and FBI cases are US cases. Regional galleries select by it.
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] | None = None
    modified: UtcDatetime | None = None  # the source's last-modified time
    resolved: bool = False
    photos: tuple[PhotoRef, ...] = ()
    url: str | None = None  # the public web page of the case, for responders
    agencies: tuple[AgencyContact, ...] = ()  # investigating agencies, contacts validated (may be absent)

    @property
    def key(self) -> str:
        """A stable id across sources, e.g. ``namus:MP71320``."""
        return f"{self.source}:{self.case_id}"


class CaseSummary(BaseModel):
    """What a listing says about a case: enough to decide whether to fetch it again."""

    model_config = ConfigDict(frozen=True)

    case_id: SafeId
    modified: UtcDatetime | None = None  # None when the listing does not say (then the case is re-fetched)
    scope: str = ""  # the listing partition it came from (a NamUs state), for vanished-case detection


class MalformedCase(ValueError):
    """A source returned a case we cannot turn into a ``PersonRecord``."""

    def __init__(self, source: str, case_id: str, reason: str) -> None:
        super().__init__(f"{source} case {case_id}: {reason}")
        self.source = source
        self.case_id = case_id
        self.reason = reason
