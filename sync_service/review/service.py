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
from sync_service.alerts.stores import Attachment, DecisionStore, Message, PartialSend, SmsSender, is_email
from sync_service.review.records import (
    _ID_ALPHABET,
    DELIVERY_RETRIES,
    ESCALATION,
    FOLLOWUP,
    RESPONDERS,
    CasePhoto,
    Decided,
    Delivery,
    ReviewRecord,
    ReviewStore,
    State,
)
from sync_service.store import Store, StoredCase, StoreError

log = logging.getLogger("mpd-alerts")

CASE_PHOTOS_SHOWN = 3
# Retrying a notification: the sweep runs every minute on AWS (every 30 s locally); within
# an attempt botocore already retried each request. 30 s, 1, 2, 4, 8, then every 10 minutes
# until MPD_NOTIFY_RETRY_ATTEMPTS or MPD_NOTIFY_RETRY_MINUTES is reached.
RETRY_FIRST_MS = 30_000
RETRY_LONGEST_MS = 10 * 60_000
# While an attempt runs, nobody else takes it before this: longer than any process that
# sends can live (the review Lambda times out after 15 s, the sweep after 60 s), so a slow
# send (botocore retrying a sick SNS) is never taken over and sent twice.
ATTEMPT_LEASE_MS = 2 * 60_000
FAR_FUTURE_MS = 2**53


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
        """Confirm or dismiss; raises ``Decided`` if someone else decided first.

        The notifications the decision calls for are written with it (one conditional
        write), then tried at once; whatever does not go out is retried by the sweep."""
        now = self.clock()
        now_ms = int(now * 1000)
        at = datetime.fromtimestamp(now, UTC)
        state = State.CONFIRMED if confirm else State.DISMISSED

        created: set[str] = set()

        def plan(current: ReviewRecord) -> dict[str, Delivery]:
            changes = _cancelled(current, ESCALATION)  # decided: the second reviewers need not look
            if confirm and (current.mode == "before" or current.rate_limited):
                changes[RESPONDERS] = Delivery(created_ms=now_ms, next_ms=now_ms)
            if not confirm and current.responders_notified_at is not None:  # review: after
                changes[FOLLOWUP] = Delivery(created_ms=now_ms, next_ms=now_ms)
            created.clear()
            created.update(kind for kind in (RESPONDERS, FOLLOWUP) if kind in changes)
            return changes

        record = self.reviews.decide(review_id, state, user, at, note.strip()[:500], plan)
        self.reviews.audit(review_id, user, state.value, note.strip()[:500])
        site = self.site(record.site)
        if not confirm and site.suppress_after_dismissal_minutes:
            until_ms = now_ms + site.suppress_after_dismissal_minutes * 60_000
            self.decisions.suppress(suppression_key(record.site, record.source, record.case_id), until_ms, user)
        outcome = Outcome(record)
        for kind in sorted(created):
            attempt = self.deliver(review_id, kind)
            outcome.sent |= attempt.sent
            outcome.error = attempt.error or outcome.error
        outcome.record = self.reviews.get(review_id) or record
        return outcome

    # --- notifications after the alert was opened: delivered, or retried ------------------

    def _recipients(self, record: ReviewRecord, kind: str) -> tuple[list[Recipient | str], Callable[[str], Message]]:
        site = self.site(record.site)
        if kind == RESPONDERS:
            return self.responders(site, record), lambda lang: self.responder_message(record, lang, True)
        if kind == FOLLOWUP:
            return self.responders(site, record), lambda lang: self.followup_message(record, lang)
        if kind == ESCALATION:
            return list(site.second_reviewers), lambda lang: self.reviewer_message(record, lang, True)
        raise ValueError(f"unknown notification {kind!r}")

    def retry_delay_ms(self, attempts: int) -> int:
        """After the ``attempts``-th failed attempt: 30 s, doubling, at most 10 minutes."""
        return min(RETRY_FIRST_MS * 2 ** max(attempts - 1, 0), RETRY_LONGEST_MS)

    def _change(
        self, review_id: str, kind: str, change: Callable[[Delivery], Delivery | None]
    ) -> tuple[ReviewRecord, Delivery] | None:
        """Apply ``change`` to one delivery by compare-and-set, re-reading on a conflict;
        None if the delivery is gone or ``change`` declines."""
        for _ in range(DELIVERY_RETRIES):
            record = self.reviews.get(review_id)
            if record is None or kind not in record.deliveries:
                return None
            changed = change(record.deliveries[kind])
            if changed is None:
                return None
            updated = self.reviews.update_deliveries(record, record.deliveries | {kind: changed})
            if updated is not None:
                return updated, changed
        raise RuntimeError(f"review {review_id}: notification {kind} kept changing under us")

    def deliver(self, review_id: str, kind: str) -> Attempt:
        """One attempt at a due delivery, to whoever has not got it yet.

        The attempt is taken first (attempts + 1, next try pushed back by the lease, which
        no other sweep or server takes), then sent, then recorded with its next try (the
        backoff after a failure). Who got it is never sent it again; after the bound it is
        given up, audited and shown."""
        now_ms = int(self.clock() * 1000)

        def take(delivery: Delivery) -> Delivery | None:
            if delivery.status != "due" or delivery.next_ms > now_ms:
                return None  # delivered, given up, or another attempt holds it
            return delivery.model_copy(update={"attempts": delivery.attempts + 1, "next_ms": now_ms + ATTEMPT_LEASE_MS})

        taken = self._change(review_id, kind, take)
        if taken is None:
            return Attempt()
        record, delivery = taken
        if self._past_bound(delivery, now_ms):
            return self._give_up(review_id, kind, delivery.error or "not delivered in time")
        recipients, message = self._recipients(record, kind)
        site = self.site(record.site)
        sent: dict[str, str] = {}
        error: str | None = None
        try:
            sent = self._send(recipients, site, message, skip=delivery.sent.keys())
        except PartialSend as partial:
            sent, error = partial.sent, _describe(partial.__cause__ or partial)
        except Exception as failure:  # the decision stands; this is retried
            error = _describe(failure)
        # Who must get it: e-mail counts only where a mail sender is configured (SMS is the alert).
        email_too = getattr(self.sender, "sends_email", True)
        everyone = [
            a
            for addresses in self._addresses(recipients, site).values()
            for a in addresses
            if email_too or not is_email(a)
        ]

        finished_ms = int(self.clock() * 1000)

        def record_result(current: Delivery) -> Delivery:
            got = current.sent | sent
            missing = [a for a in everyone if a not in got]
            status = "delivered" if error is None and not missing else current.status
            next_ms = finished_ms + self.retry_delay_ms(current.attempts)
            return current.model_copy(
                update={"sent": got, "missing": missing, "status": status, "error": error or "", "next_ms": next_ms}
            )

        result = self._change(review_id, kind, record_result)
        if sent:
            action = "escalated" if kind == ESCALATION else "notified"
            self.reviews.audit(review_id, "system", action, f"{kind}: " + ", ".join(sorted(sent)))
        if error is None:
            return Attempt(sent)
        log.error("notification failed", extra={"review_id": review_id, "kind": kind, "error": error})
        done = result[1] if result else delivery
        if done.attempts >= self.settings.notify_retry_attempts or self._past_bound(done, done.next_ms):
            return self._give_up(review_id, kind, error, sent)
        self.reviews.audit(
            review_id,
            "system",
            "notify_failed",
            f"{kind}, attempt {done.attempts}: {error}; not reached: {', '.join(done.missing)};"
            f" next try in {max(0, done.next_ms - finished_ms) // 1000} s",
        )
        return Attempt(sent, error)

    def _past_bound(self, delivery: Delivery, at_ms: int) -> bool:
        return at_ms - delivery.created_ms >= self.settings.notify_retry_minutes * 60_000

    def _give_up(self, review_id: str, kind: str, error: str, sent: dict[str, str] | None = None) -> Attempt:
        changed = self._change(review_id, kind, lambda d: d.model_copy(update={"status": "failed", "error": error}))
        missing = ", ".join(changed[1].missing) if changed else "?"
        attempts = changed[1].attempts if changed else "?"
        log.error("notification given up", extra={"review_id": review_id, "kind": kind, "missing": missing})
        self.reviews.audit(
            review_id,
            "system",
            "notify_gave_up",
            f"{kind} after {attempts} attempts: {error}; never reached: {missing}",
        )
        return Attempt(sent or {}, error, gave_up=True)

    # --- the clock: escalation, expiry, retries ------------------------------------------

    def sweep(self) -> dict[str, int]:
        """Escalate pending alerts past their site's minutes; expire those past its hours;
        retry notifications that are due. Counts what it did, and how many wait for a retry."""
        now = self.clock()
        now_ms = int(now * 1000)
        done = {"escalated": 0, "expired": 0, "retried": 0, "gave_up": 0, "awaiting_retry": 0}
        shortest = min([s.escalate_after_minutes for s in self.settings.sites.sites.values()] + [10, 1])
        for record in self.reviews.pending_before(now_ms - shortest * 60_000):
            site = self.site(record.site)
            age_ms = now_ms - record.created_ms
            if age_ms >= site.expire_after_hours * 3_600_000:
                try:
                    self.reviews.decide(
                        record.review_id,
                        State.EXPIRED,
                        "system",
                        datetime.fromtimestamp(now, UTC),
                        "",
                        lambda current: _cancelled(current, ESCALATION),
                    )
                except Decided:
                    continue
                self.reviews.audit(record.review_id, "system", "expired")
                done["expired"] += 1
                continue
            due = age_ms >= site.escalate_after_minutes * 60_000
            if due and site.second_reviewers and not record.rate_limited and ESCALATION not in record.deliveries:
                # Adding the delivery is the once-only guard: a conditional write.
                added = self.reviews.update_deliveries(
                    record, record.deliveries | {ESCALATION: Delivery(created_ms=now_ms, next_ms=now_ms)}
                )
                if added is not None:
                    done["escalated"] += bool(self.deliver(record.review_id, ESCALATION).sent)
        # Notifications due: retries, and first attempts whose process died before making them.
        for record in self.reviews.deliveries_due(now_ms):
            for kind, delivery in record.deliveries.items():
                if delivery.status == "due" and delivery.next_ms <= now_ms:
                    attempt = self.deliver(record.review_id, kind)
                    done["retried"] += 1
                    done["gave_up"] += attempt.gave_up
        done["awaiting_retry"] = sum(
            delivery.status == "due"
            for record in self.reviews.deliveries_due(FAR_FUTURE_MS)
            for delivery in record.deliveries.values()
        )
        purge = getattr(self.reviews, "purge_expired", None)
        if purge is not None:
            purge(now)
        return done


@dataclass
class Attempt:
    """What one delivery attempt did."""

    sent: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    gave_up: bool = False


def _cancelled(record: ReviewRecord, kind: str) -> dict[str, Delivery]:
    delivery = record.deliveries.get(kind)
    if delivery is None or delivery.status != "due":
        return {}
    return {kind: delivery.model_copy(update={"status": "cancelled"})}


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]
