"""The SMS text: what a responder needs, in at most two SMS segments.

An SMS segment holds 160 GSM-7 septets, or 70 UCS-2 code units; a message of
several segments loses 7 septets (or 3 units) per segment to the concatenation
header, so two segments hold 306 GSM-7 septets or 134 UCS-2 units. One character
outside GSM-7 switches the whole message to UCS-2, so characters that have a
close GSM-7 form (``Ł`` -> ``L``, ``’`` -> ``'``) are folded first.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import date, datetime

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec: the GSM 03.38 tables, not ours)

MAX_SEGMENTS = 2

# Characters GSM-7 lacks that Unicode does not decompose (NFKD handles the accented ones).
_FOLDS = str.maketrans(
    {"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "…": "...", "\u00a0": " ",
     "Ł": "L", "ł": "l", "Đ": "D", "đ": "d", "ı": "i", "Œ": "OE", "œ": "oe", "Þ": "Th", "þ": "th", "ð": "d"}
)  # fmt: skip


# Words per language. Spanish needs no character outside GSM-7 once folded (ú -> u).
WORDS = {
    "en": {
        "seen": "MISSING PERSON SEEN",
        "confirmed": "CONFIRMED BY REVIEWER",
        "now": "now",
        "when_missing": "when missing",
        "last_seen": "Last seen",
        "date_unknown": "date unknown",
        "in": "in",
        "seen_at": "Seen {when} at {where}.",
        "similarity": "Similarity",
        "not_fresh": "(case source not reached: details from the gallery)",
        "review": "Review:",
        "request": "REVIEW NEEDED: possible missing-person match at {site}, {when}. Log in to decide: {link}",
        "escalation": "REVIEW NEEDED, no decision after {minutes} min: possible missing-person match at {site}, {when}. {link}",
        "disregard": "DISREGARD the alert of {when} about {name}, {case}, at {site}: a reviewer found it is not this person.",
    },
    "es": {
        "seen": "PERSONA DESAPARECIDA VISTA",
        "confirmed": "CONFIRMADO POR REVISOR",
        "now": "ahora",
        "when_missing": "al desaparecer",
        "last_seen": "Vista por ultima vez",
        "date_unknown": "fecha desconocida",
        "in": "en",
        "seen_at": "Vista {when} en {where}.",
        "similarity": "Similitud",
        "not_fresh": "(fuente del caso sin respuesta: datos de la galeria)",
        "review": "Revision:",
        "request": "REVISION NECESARIA: posible coincidencia de persona desaparecida en {site}, {when}. Entre para decidir: {link}",
        "escalation": "REVISION NECESARIA, sin decision tras {minutes} min: posible coincidencia en {site}, {when}. {link}",
        "disregard": "IGNORE la alerta de las {when} sobre {name}, {case}, en {site}: un revisor determino que no es esta persona.",
    },
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_URL = re.compile(r"(?i)\b(?:[a-z][a-z0-9+.-]*://|www\.)\S*")


def clean_text(text: str, limit: int = 120) -> str:
    """Text from outside made safe to put in front of a person: no control or
    direction-changing characters, no URLs, one line, at most ``limit`` characters."""
    text = _URL.sub(" ", _CONTROL.sub(" ", text))
    return " ".join(text.split())[:limit].strip()


def gsm7_septets(text: str) -> int | None:
    """Septets ``text`` takes in GSM-7 (extension characters take two), or None if it cannot."""
    try:
        return len(text.encode("gsm03.38"))
    except UnicodeEncodeError:
        return None


def is_gsm7(text: str) -> bool:
    return gsm7_septets(text) is not None


def segment_count(text: str) -> int:
    """How many SMS segments ``text`` takes (GSM-7 when it can, else UCS-2)."""
    septets = gsm7_septets(text)
    if septets is not None:
        units, single, multi = septets, 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2  # characters beyond the BMP take two units
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def fold_to_gsm7(text: str) -> str:
    """Replace characters outside GSM-7 by their closest GSM-7 form where one exists."""
    text = text.translate(_FOLDS)
    folded = []
    for char in text:
        if is_gsm7(char):
            folded.append(char)
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        folded.append(base if base and is_gsm7(base) else char)
    return "".join(folded)


@dataclass(frozen=True)
class AlertText:
    """The facts an alert carries; ``render`` lays them out within the segment budget."""

    name: str
    case_label: str  # e.g. "NamUs MP71320"
    sex: str = ""  # "F", "M" or ""
    age_now: str = ""  # "54" or "34-36"
    age_missing: str = ""
    last_seen_date: date | None = None
    last_seen_place: str = ""
    seen_at: datetime | None = None  # already in the site's time zone
    seen_where: str = ""  # "Gate camera, North trailhead"
    similarity: float | None = None
    link: str = ""
    details_fresh: bool = True  # False when the source API did not answer in time
    review_link: str = ""  # the alert's short link on the review page
    confirmed: bool = False  # a reviewer confirmed it (review: before)
    language: str = "en"

    def _compose(self) -> str:
        words = WORDS.get(self.language, WORDS["en"])
        who = self.name
        traits = ", ".join(
            part
            for part in (
                self.sex,
                f"{self.age_now} {words['now']}" if self.age_now else "",
                f"{self.age_missing} {words['when_missing']}" if self.age_missing else "",
            )
            if part
        )
        if traits:
            who += f" ({traits})"
        header = f"{words['confirmed']}: {words['seen']}" if self.confirmed else words["seen"]
        lines = [f"{header}: {who}, {self.case_label}."]
        if self.last_seen_date or self.last_seen_place:
            when = self.last_seen_date.isoformat() if self.last_seen_date else words["date_unknown"]
            where = f" {words['in']} {self.last_seen_place}" if self.last_seen_place else ""
            lines.append(f"{words['last_seen']} {when}{where}.")
        if self.seen_at or self.seen_where:
            when = self.seen_at.strftime("%Y-%m-%d %H:%M %Z").strip() if self.seen_at else ""
            lines.append(words["seen_at"].format(when=when, where=self.seen_where).replace("  ", " "))
        if self.similarity is not None:
            lines.append(f"{words['similarity']} {self.similarity:.2f}.")
        if not self.details_fresh:
            lines.append(words["not_fresh"])
        if self.review_link:
            lines.append(f"{words['review']} {self.review_link}")
        if self.link:
            lines.append(self.link)
        return fold_to_gsm7(" ".join(lines))

    def render(self) -> str:
        """The SMS text within ``MAX_SEGMENTS``: fields are shortened, then the least
        needed ones dropped; the case label and the link always stay."""
        for variant in self._variants():
            text = variant._fit()
            if text is not None:
                return text
        raise AssertionError("unreachable: the last variant always fits")  # pragma: no cover

    def _variants(self) -> list[AlertText]:
        no_similarity = replace(self, similarity=None)
        no_last_seen = replace(no_similarity, last_seen_date=None, last_seen_place="")
        no_traits = replace(no_last_seen, sex="", age_now="", age_missing="")
        # Last resort for a name in a script GSM-7 lacks (UCS-2 halves the budget):
        # drop what GSM-7 cannot carry; the case label and link identify the person.
        gsm_only = replace(
            no_traits,
            name=_gsm7_only(self.name) or "name in case file",
            seen_where=_gsm7_only(self.seen_where) or "camera",
            case_label=_gsm7_only(self.case_label)[:60],
            link=self.link if len(self.link) <= 100 and is_gsm7(self.link) else "",
            review_link=self.review_link if len(self.review_link) <= 80 and is_gsm7(self.review_link) else "",
        )
        return [self, no_similarity, no_last_seen, no_traits, gsm_only]

    def _fit(self) -> str | None:
        text = self._compose()
        current = self
        # Shorten the free-text fields, least important first; a link is never cut.
        for field in ("last_seen_place", "seen_where", "name"):
            original: str = getattr(self, field)
            keep = len(original)
            while segment_count(text) > MAX_SEGMENTS and keep > 12:
                keep = max(12, keep - 8)
                current = replace(current, **{field: original[:keep].rstrip() + "."})
                text = current._compose()
        return text if segment_count(text) <= MAX_SEGMENTS else None


def _gsm7_only(text: str) -> str:
    folded = fold_to_gsm7(text)
    return " ".join("".join(char for char in folded if is_gsm7(char)).split())


def short_message(language: str, kind: str, **fields: str) -> str:
    """A reviewer request, an escalation or a follow-up, within ``MAX_SEGMENTS``.

    Free-text fields (site and person names) are shortened until it fits; the link stays.
    """
    template = WORDS.get(language, WORDS["en"])[kind]
    values = dict(fields)
    for _ in range(20):
        text = fold_to_gsm7(template.format(**values))
        if segment_count(text) <= MAX_SEGMENTS:
            return text
        for name in ("name", "site"):
            if name in values and len(values[name]) > 12:
                values[name] = values[name][: max(12, len(values[name]) - 12)].rstrip() + "."
        values = {k: (_gsm7_only(v) if k in ("name", "site") else v) for k, v in values.items()}
    return text
