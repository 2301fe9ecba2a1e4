"""Who is told what, and when: review records per site, decisions, escalation.

``review: before`` (the default): reviewers get a short link at once; responders are
texted only when a reviewer confirms; an alert still pending after
``escalate_after_minutes`` goes to the second reviewer group. ``review: after``:
responders are texted at once (with the link) and get a follow-up if a reviewer
dismisses it. A dismissal silences that person at that site for
``suppress_after_dismissal_minutes``. All text comes from the record, which holds
cloud-side data only (the gallery the cloud built, the fresh lookup, the site table).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from edge_app.match_event import MatchEvent
from sync_service.alerts.cases import SOURCE_LABELS, CaseDetails, clean_agencies
from sync_service.alerts.config import AlertSettings, Recipient, SiteSettings
from sync_service.alerts.galleries import GalleryPerson
from sync_service.alerts.sms import AlertText, short_message
from sync_service.alerts.stores import Attachment, DecisionStore, Message, PartialSend, SmsSender
from sync_service.review.records import (
    _ID_ALPHABET,
    CasePhoto,
    Decided,
    ReviewRecord,
    ReviewStore,
    State,
)
from sync_service.store import Store, StoredCase, StoreError

log = logging.getLogger("mpd-alerts")

CASE_PHOTOS_SHOWN = 3


def review_id_for(event_id: str) -> str:
    """The same id for every delivery of one event, so a retried invocation finds its record."""
    digest = int.from_bytes(hashlib.sha256(f"review:{event_id}".encode()).digest()[:8], "big")
    return "".join(_ID_ALPHABET[(digest >> (5 * i)) & 31] for i in range(10))


def suppression_key(site: str, source: str, case_id: str) -> str:
    return f"suppress#{site}#{source}#{case_id}"


@dataclass
class Outcome:
    """What a decision did: the record as decided, who was texted, what went wrong."""

    record: ReviewRecord
    sent: dict[str, str] = field(default_factory=dict)
    error: str | None = None


class ReviewService:
    def __init__(
        self,
        settings: AlertSettings,
        reviews: ReviewStore,
        decisions: DecisionStore,
        sender: SmsSender,
        photos: Store | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.reviews = reviews
        self.decisions = decisions
        self.sender = sender
        self.photos = photos
        self.clock = clock

    # --- routing ---------------------------------------------------------------------

    def site(self, site_id: str) -> SiteSettings:
        if site_id in self.settings.sites.sites:
            return self.settings.sites.sites[site_id]
        return self.settings.sites.site_of(site_id)[1]

    def responders(self, site: SiteSettings, record: ReviewRecord | None = None) -> list[Recipient | str]:
        """The site's responders; a site with none uses MPD_ALERT_TOPIC_ARN (its SMS
        subscribers) or MPD_ALERT_PHONE_NUMBERS. With ``record``, also the case's agency
        when the site opted in (``notify_case_agency``)."""
        if site.responders:
            recipients: list[Recipient | str] = list(site.responders)
        elif self.settings.topic_arn:
            recipients = [self.settings.topic_arn]
        else:
            recipients = [Recipient(phone=number) for number in self.settings.phone_numbers]
        if record is not None and site.notify_case_agency:
            recipients += self.agency_recipients(site, record)
        return recipients

    @staticmethod
    def agency_recipients(site: SiteSettings, record: ReviewRecord) -> list[Recipient]:
        """The case's primary investigating agency (or its only one) on the site's channels."""
        agencies = [a for a in record.agencies if a.primary] or record.agencies[:1]
        recipients = []
        for agency in agencies:
            phone = agency.phone if "sms" in site.case_agency_channels else None
            email = agency.email if "email" in site.case_agency_channels else None
            if not (phone or email):
                continue
            try:  # validated at parse; checked again against what a configured recipient may be
                recipients.append(Recipient(phone=phone, email=email))
            except ValidationError:
                log.warning("agency contact refused", extra={"review_id": record.review_id, "agency": agency.name})
        return recipients

    @staticmethod
    def _addresses(recipients: Sequence[Recipient | str], site: SiteSettings) -> dict[str, list[str]]:
        """language -> addresses (numbers, e-mail addresses, SNS topic ARNs), each address
        once (an agency number may also be a responder's)."""
        by_language: dict[str, list[str]] = defaultdict(list)
        seen: set[str] = set()
        for recipient in recipients:
            if isinstance(recipient, str):
                language, addresses = site.language, [recipient]
            else:
                language = recipient.language or site.language
                addresses = [a for a in (recipient.phone, recipient.email) if a]
            for address in addresses:
                if address not in seen:
                    seen.add(address)
                    by_language[language].append(address)
        return by_language

    def _send(
        self,
        recipients: Sequence[Recipient | str],
        site: SiteSettings,
        message: Callable[[str], Message],
        skip: Collection[str] = (),
    ) -> dict[str, str]:
        sent: dict[str, str] = {}
        for language, addresses in self._addresses(recipients, site).items():
            try:
                sent |= self.sender.send(message(language), addresses, skip=skip)
            except PartialSend as partial:
                raise PartialSend(sent | partial.sent) from partial.__cause__
            except Exception as error:
                if sent:
                    raise PartialSend(sent) from error
                raise
        return sent

    # --- messages ----------------------------------------------------------------------

    def link(self, record: ReviewRecord) -> str:
        return f"{self.settings.review_url.rstrip('/')}/r/{record.review_id}"

    def _local_time(self, record: ReviewRecord, fmt: str = "%H:%M") -> str:
        return record.last_seen.astimezone(ZoneInfo(record.timezone)).strftime(fmt)

    def responder_message(self, record: ReviewRecord, language: str, confirmed: bool) -> Message:
        text = AlertText(
            name=record.name,
            case_label=f"{SOURCE_LABELS.get(record.source, record.source)} {record.case_id}",
            sex=record.sex,
            age_now=record.age_now,
            age_missing=record.age_missing,
            last_seen_date=record.last_seen_date,
            last_seen_place=record.last_seen_place,
            seen_at=record.last_seen.astimezone(ZoneInfo(record.timezone)),
            seen_where=f"{record.camera_name}, {record.device_name}",
            similarity=record.best_similarity,
            link=record.case_link,
            details_fresh=record.details_fresh,
            review_link=self.link(record),
            confirmed=confirmed,
            language=language,
        ).render()
        return Message(sms=text)

    def reviewer_message(self, record: ReviewRecord, language: str, escalation: bool = False) -> Message:
        when = self._local_time(record)
        if escalation:
            minutes = str(self.site(record.site).escalate_after_minutes)
            sms = short_message(
                language, "escalation", site=record.site_name, when=when, link=self.link(record), minutes=minutes
            )
        else:
            sms = short_message(language, "request", site=record.site_name, when=when, link=self.link(record))
        attachments = []
        crop = self.reviews.get_crop(record.review_id) if record.has_crop else None
        if crop:
            attachments.append(Attachment("camera-crop.jpg", crop))
        photo = self._case_photo(record, 0)
        if photo:
            attachments.append(Attachment(f"case-photo.{photo[1]}", photo[0], photo[1]))
        body = (
            f"{sms}\n\n"
            f"Case: {SOURCE_LABELS.get(record.source, record.source)} {record.case_id}, {record.name}\n"
            f"Seen: {self._local_time(record, '%Y-%m-%d %H:%M %Z')} at {record.camera_name}, {record.device_name}\n"
            f"Similarity {record.best_similarity:.2f} (threshold {record.threshold:.2f})\n\n"
            "Attached: the camera's crop of the face and the case photo. Decide on the review page."
        )
        subject = f"Review needed: possible match at {record.site_name}, {when}"
        return Message(sms=sms, subject=subject, email_text=body, attachments=tuple(attachments))

    def followup_message(self, record: ReviewRecord, language: str) -> Message:
        case = f"{SOURCE_LABELS.get(record.source, record.source)} {record.case_id}"
        sms = short_message(
            language, "disregard", when=self._local_time(record), name=record.name, case=case, site=record.site_name
        )
        return Message(sms=sms)

    def _case_photo(self, record: ReviewRecord, index: int) -> tuple[bytes, str] | None:
        if self.photos is None or index >= len(record.case_photos):
            return None
        photo = record.case_photos[index]
        data = self.photos.read_bytes(photo.key)
        if data is None or hashlib.sha256(data).hexdigest() != photo.sha256:
            log.warning("case photo missing or changed", extra={"key": photo.key})
            return None
        return data, photo.key.rsplit(".", 1)[-1].replace("jpg", "jpeg")

    def case_photo(self, record: ReviewRecord, index: int) -> tuple[bytes, str] | None:
        """(bytes, image subtype) of the record's ``index``-th case photo, checked by sha256."""
        return self._case_photo(record, index)

    # --- a new alert -----------------------------------------------------------------

    def suppressed(self, site_id: str, person: GalleryPerson, now: float) -> tuple[int, str] | None:
        return self.decisions.suppressed_until(suppression_key(site_id, person.source, person.case_id), int(now * 1000))

    def open(
        self,
        match: MatchEvent,
        person: GalleryPerson,
        details: CaseDetails,
        now: float,
        rate_limited: bool = False,
        skip: Collection[str] = (),
    ) -> tuple[ReviewRecord, dict[str, str]]:
        """Create (or, on a retry, find) the record and notify per the site's mode."""
        site_id, site = self.settings.sites.site_of(match.device_id)
        camera, device = self.settings.sites.describe(match.device_id, match.camera_id)
        review_id = review_id_for(str(match.event_id))
        record = self.reviews.get(review_id)
        if record is None:
            stored = self._stored_case(person)
            agencies = details.agencies if details.fresh or stored is None else clean_agencies(stored.record.agencies)
            crop_expires = int(now) + self.settings.crop_ttl_days * 24 * 3600
            record = ReviewRecord(
                review_id=review_id,
                event_id=str(match.event_id),
                site=site_id,
                site_name=site.name,
                mode=site.review,
                timezone=site.timezone,
                device_id=match.device_id,
                device_name=device,
                camera_name=camera,
                person_id=person.person_id,
                source=person.source,
                case_id=person.case_id,
                name=details.name,
                sex=details.sex,
                age_now=details.age_now,
                age_missing=details.age_missing,
                last_seen_date=details.last_seen_date,
                last_seen_place=details.last_seen_place,
                case_link=details.link,
                details_fresh=details.fresh,
                case_photos=self._case_photos(stored),
                agencies=list(agencies),
                best_similarity=match.best_similarity,
                mean_similarity=match.mean_similarity,
                threshold=match.threshold,
                frames_used=match.frames_used,
                first_seen=match.first_seen,
                last_seen=match.last_seen,
                gallery_version=match.gallery_version,
                model_id=match.model_id,
                has_crop=match.crop_jpeg_b64 is not None,
                crop_expires_at=crop_expires if match.crop_jpeg_b64 else None,
                rate_limited=rate_limited,
                created_ms=int(now * 1000),
                expires_at=int(now) + self.settings.audit_ttl_days * 24 * 3600,
            )
            if match.crop_jpeg_b64:  # validated as a JPEG of at most 8 KB by the contract
                self.reviews.put_crop(review_id, base64.b64decode(match.crop_jpeg_b64), crop_expires)
            self.reviews.create(record)
            self.reviews.audit(review_id, "system", "created", f"event {record.event_id}")
        if rate_limited:
            return record, {}
        sent = self._send(site.reviewers, site, lambda lang: self.reviewer_message(record, lang), skip)
        if record.mode == "after":  # the mode the alert was opened under, also on a retry
            sent |= self._send(
                self.responders(site, record), site, lambda lang: self.responder_message(record, lang, False), skip
            )
            self.reviews.mark(review_id, "responders_notified_at", datetime.fromtimestamp(now, UTC))
        return record, sent

    def _stored_case(self, person: GalleryPerson) -> StoredCase | None:
        """The case as the ingest stored it: its photos, and its agencies when the source is not reached."""
        if self.photos is None:
            return None
        try:
            return self.photos.get_case(person.source, person.case_id)
        except StoreError as error:
            log.warning("case not readable in the store", extra={"error": str(error)})
            return None

    @staticmethod
    def _case_photos(case: StoredCase | None) -> list[CasePhoto]:
        if case is None:
            return []
        return [CasePhoto(key=p.key, sha256=p.sha256, category=p.category) for p in case.photos[:CASE_PHOTOS_SHOWN]]

    # --- decisions ---------------------------------------------------------------------

    def decide(self, review_id: str, user: str, confirm: bool, note: str = "") -> Outcome:
        """Confirm or dismiss; raises ``Decided`` if someone else decided first."""
        now = self.clock()
        at = datetime.fromtimestamp(now, UTC)
        state = State.CONFIRMED if confirm else State.DISMISSED
        record = self.reviews.decide(review_id, state, user, at, note.strip()[:500])
        self.reviews.audit(review_id, user, state.value, note.strip()[:500])
        site = self.site(record.site)
        outcome = Outcome(record)
        try:
            if confirm and record.mode == "before" and not record.rate_limited:
                outcome.sent = self._send(
                    self.responders(site, record), site, lambda lang: self.responder_message(record, lang, True)
                )
                self.reviews.mark(review_id, "responders_notified_at", at)
            elif confirm and record.rate_limited:
                outcome.sent = self._send(
                    self.responders(site, record), site, lambda lang: self.responder_message(record, lang, True)
                )
            if not confirm:
                minutes = site.suppress_after_dismissal_minutes
                if minutes:
                    until_ms = int(now * 1000) + minutes * 60_000
                    self.decisions.suppress(suppression_key(record.site, record.source, record.case_id), until_ms, user)
                if record.responders_notified_at is not None and self.reviews.mark(review_id, "followup_sent_at", at):
                    outcome.sent = self._send(
                        self.responders(site, record), site, lambda lang: self.followup_message(record, lang)
                    )
        except Exception as error:  # the decision stands; say what did not go out
            log.exception("sending after a decision failed", extra={"review_id": review_id})
            outcome.error = f"{type(error).__name__}: {error}"[:200]
            self.reviews.audit(review_id, "system", "notify_failed", outcome.error)
        if outcome.sent:
            self.reviews.audit(review_id, "system", "notified", ", ".join(sorted(outcome.sent)))
        return outcome

    # --- the clock: escalation, expiry ---------------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Escalate pending alerts past their site's minutes; expire those past its hours."""
        now = self.clock()
        now_ms = int(now * 1000)
        done = {"escalated": 0, "expired": 0}
        shortest = min([s.escalate_after_minutes for s in self.settings.sites.sites.values()] + [10, 1])
        for record in self.reviews.pending_before(now_ms - shortest * 60_000):
            site = self.site(record.site)
            age_ms = now_ms - record.created_ms
            if age_ms >= site.expire_after_hours * 3_600_000:
                try:
                    self.reviews.decide(record.review_id, State.EXPIRED, "system", datetime.fromtimestamp(now, UTC), "")
                except Decided:
                    continue
                self.reviews.audit(record.review_id, "system", "expired")
                done["expired"] += 1
                continue
            if age_ms >= site.escalate_after_minutes * 60_000 and site.second_reviewers and not record.rate_limited:
                if self.reviews.mark(record.review_id, "escalated_at", datetime.fromtimestamp(now, UTC)):
                    try:
                        sent = self._send(
                            site.second_reviewers, site, lambda lang, r=record: self.reviewer_message(r, lang, True)
                        )
                        self.reviews.audit(record.review_id, "system", "escalated", ", ".join(sorted(sent)))
                        done["escalated"] += 1
                    except Exception as error:
                        log.exception("escalation failed", extra={"review_id": record.review_id})
                        self.reviews.audit(record.review_id, "system", "notify_failed", repr(error)[:200])
        purge = getattr(self.reviews, "purge_expired", None)
        if purge is not None:
            purge(now)
        return done
