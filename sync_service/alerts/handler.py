"""The alert Lambda: one confirmed match in, at most one SMS out.

Triggered by the IoT rule on ``mpd/+/match`` (see ``rule.py`` for the event shape).
Steps: validate with the match-event contract (and its plausibility against the
receive time) -> check the person against the gallery version the device names ->
drop duplicates by event id (Powertools idempotency, a conditional write) -> a
dismissal's suppression -> cooldown per canonical case and device (one atomic
conditional update) -> the device's hourly budget -> fresh case details (short
timeout, fallback to the gallery's name) -> review record, and the notifications the
site's review mode asks for -> audit record. A malformed payload is logged and
answered, never raised.
Infrastructure errors (DynamoDB, SNS) are raised after botocore's retries, so AWS
retries the invocation; the idempotency record and the cooldown claim are released
first, so the retry sends the SMS exactly once.
"""

from __future__ import annotations

import binascii
import contextvars
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.idempotency import (
    BasePersistenceLayer,
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyValidationError,
)
from pydantic import ValidationError

from edge_app.match_event import MAX_EVENT_BYTES, MatchEvent
from sync_service.alerts.cases import CaseFetcher, CaseLookup
from sync_service.alerts.config import AlertSettings
from sync_service.alerts.galleries import GalleryPerson, PublishedGalleries, UnknownCase, canonical_case_id
from sync_service.alerts.rule import RuleEvent, device_of
from sync_service.alerts.sms import segment_count
from sync_service.alerts.stores import (
    BOTO_CONFIG,
    DecisionStore,
    DynamoDecisionStore,
    FileSmsSink,
    PartialSend,
    SmsSender,
    SnsSender,
    SqliteDecisionStore,
    SqlitePersistenceLayer,
    SqliteTables,
)
from sync_service.review.records import DynamoReviewStore, SqliteReviewStore
from sync_service.review.service import ReviewService
from sync_service.store import StoreError, open_store

logger = Logger(service="mpd-alerts")

# A device whose PUBACK was lost re-sends from its outbox when it reconnects, which
# can be days later at a site with a poor uplink: remember event ids for a month.
IDEMPOTENCY_DAYS = 30


class Decision(StrEnum):
    SENT = "sent"  # responders texted at once (review: after)
    REVIEW_PENDING = "review_pending"  # reviewers notified; responders wait for a confirmation
    RATE_LIMITED = "rate_limited"  # the device is over its hourly budget: on the page, nobody texted
    SUPPRESSED = "suppressed"  # a reviewer dismissed this person at this site recently
    COOLDOWN = "cooldown"
    CASE_RESOLVED = "case_resolved"
    DUPLICATE = "duplicate"
    PARTIAL = "partial"  # some listed numbers got the SMS, then sending failed (retried)
    REJECTED = "rejected"


class Rejected(ValueError):
    """A payload that is not a valid match event; the message says why."""


def parse_event(event: Any, now: Callable[[], float] = time.time) -> MatchEvent:
    """The match event inside a rule event; raises ``Rejected`` naming what is wrong.

    Plausibility is judged against the time IoT Core received it (``received_ms``, set
    by the rule, not the device), or now when the envelope has none."""
    if not isinstance(event, dict):
        raise Rejected(f"Lambda event is a {type(event).__name__}, not an object")
    try:
        envelope = RuleEvent.model_validate(event)
    except ValidationError as error:
        raise Rejected(f"not a rule event (payload, topic): {_first_error(error)}") from None
    if len(envelope.payload) > (MAX_EVENT_BYTES * 4) // 3 + 4:
        raise Rejected(f"payload is more than {MAX_EVENT_BYTES} bytes")
    try:
        payload = envelope.payload_bytes()
    except (binascii.Error, ValueError):
        raise Rejected("payload is not base64 (the rule encodes it)") from None
    try:
        match = MatchEvent.from_json(payload)
    except ValidationError as error:
        raise Rejected(f"not a valid match event: {_first_error(error)}") from None
    except ValueError as error:
        raise Rejected(str(error)) from None
    except Exception as error:  # parsing touches nothing outside: whatever fails here is bad input
        raise Rejected(f"unreadable payload ({type(error).__name__}: {error})"[:300]) from None
    topic_device = device_of(envelope.topic)
    if topic_device != match.device_id:
        # The IoT policy lets a device publish only under its own name: the topic is the
        # authenticated identity, the body is just a claim.
        raise Rejected(f"device_id {match.device_id!r} does not match topic {envelope.topic!r}")
    received_s = envelope.received_ms / 1000 if envelope.received_ms is not None else now()
    try:
        received_at = datetime.fromtimestamp(received_s, UTC)
    except (OverflowError, OSError, ValueError):
        raise Rejected(f"received_ms {envelope.received_ms} is not a time") from None
    problem = match.implausibility(received_at)
    if problem:
        raise Rejected(f"implausible event: {problem}")
    return match


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(root)"
    return f"{where}: {first['msg']} ({error.error_count()} error(s))"


class LocalContext:
    """The slice of the Lambda context Powertools reads, for in-process calls."""

    function_name = "mpd-alerts-local"

    def __init__(self, timeout_s: float = 30.0) -> None:
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


_ran_now: contextvars.ContextVar[bool] = contextvars.ContextVar("ran_now", default=False)


class AlertService:
    """The decision logic, the same whatever the stores behind it."""

    def __init__(
        self,
        settings: AlertSettings,
        store: DecisionStore,
        persistence: BasePersistenceLayer,
        lookup: CaseLookup,
        review: ReviewService,
        galleries: PublishedGalleries | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.store = store
        self.lookup = lookup
        self.persistence = persistence
        self.review = review
        # None: no gallery store configured (a warning at start); the device's claim is
        # then unchecked, but still none of its strings reaches a message.
        self.galleries = galleries
        self.idempotency = IdempotencyConfig(
            event_key_jmespath="event_id",
            # The same event id with other content is a device bug or a forgery, not a retry.
            payload_validation_jmespath="[device_id, camera_id, source, case_id, first_seen]",
            raise_on_no_idempotency_key=True,
            expires_after_seconds=IDEMPOTENCY_DAYS * 24 * 3600,
        )
        self._process_once = idempotent_function(
            data_keyword_argument="event", persistence_store=persistence, config=self.idempotency
        )(self._process)

    def handle(self, event: Any, context: Any = None) -> dict[str, Any]:
        """Handle one rule event; returns the decision. Raises only for infrastructure errors."""
        try:
            match = parse_event(event, self.clock)
            person = self.person_of(match)
        except Rejected as error:
            logger.warning("rejected payload", extra={"reason": str(error), **_fingerprint(event)})
            return {"decision": Decision.REJECTED.value, "reason": str(error)}
        # Lets Powertools expire an in-progress record if this invocation dies mid-way.
        self.idempotency.register_lambda_context(context or LocalContext())
        ids = {"event_id": str(match.event_id), "device_id": match.device_id, "case_id": match.case_id}
        token = _ran_now.set(False)
        try:
            result = self._process_once(
                event=match.model_dump(mode="json", exclude={"crop_jpeg_b64"}), match=match, person=person
            )
        except IdempotencyAlreadyInProgressError:
            # Another copy is being handled right now. If that one fails it raises, and AWS
            # retries it; acknowledging this copy cannot lose the alert.
            logger.info("duplicate event, a copy is in progress", extra=ids)
            return {"decision": Decision.DUPLICATE.value, "event_id": ids["event_id"], "in_progress": True}
        except IdempotencyValidationError:
            reason = "event_id reused with different content"
            logger.warning("rejected payload", extra={"reason": reason, **ids})
            return {"decision": Decision.REJECTED.value, "reason": reason}
        finally:
            ran = _ran_now.get()
            _ran_now.reset(token)
        if not ran:
            logger.info("duplicate event, already handled", extra=ids | {"first_decision": result.get("decision")})
            return {"decision": Decision.DUPLICATE.value, "event_id": ids["event_id"], "first": result}
        return result

    @property
    def sender(self) -> SmsSender:
        return self.review.sender

    @sender.setter
    def sender(self, sender: SmsSender) -> None:
        self.review.sender = sender

    def person_of(self, match: MatchEvent) -> GalleryPerson:
        """The cloud's row for the person the event names; raises ``Rejected`` if not in its gallery."""
        if self.galleries is None:
            try:
                return GalleryPerson(match.person_id, "", match.source, canonical_case_id(match.source, match.case_id))
            except ValueError as error:
                raise Rejected(str(error)) from None
        try:
            return self.galleries.person(match)
        except UnknownCase as error:
            raise Rejected(str(error)) from None

    def _process(self, event: dict[str, Any], match: MatchEvent, person: GalleryPerson) -> dict[str, Any]:
        _ran_now.set(True)
        now = self.clock()
        event_id = str(match.event_id)
        site_id, _ = self.settings.sites.site_of(match.device_id)
        suppressed = self.review.suppressed(site_id, person, now)
        if suppressed is not None:
            until = datetime.fromtimestamp(suppressed[0] / 1000, UTC).isoformat()
            return self._decided(match, event, Decision.SUPPRESSED, now, until=until, by=suppressed[1])
        # The canonical case id: re-spelling a case id cannot dodge the cooldown.
        cooldown_key = f"{person.source}#{person.case_id}#{match.device_id}"
        claim = self.store.claim_cooldown(
            cooldown_key,
            event_id,
            now_ms=int(now * 1000),
            cooldown_ms=self.settings.cooldown_seconds * 1000,
            expires_at=int(now) + self.settings.cooldown_seconds + 3600,
        )
        if not claim.granted:
            return self._decided(match, event, Decision.COOLDOWN, now, held_by=claim.holder_event_id)
        already_sent: dict[str, str] = {}
        if claim.retaken:
            # A retry after this event's invocation died, or failed part-way through a list of
            # recipients, holding the claim: whoever the audit says got a message is not sent it again.
            previous = self.store.read_audit(event_id) or {}
            already_sent = dict(previous.get("sent_to", {}))
            if previous.get("decision") in (Decision.SENT.value, Decision.REVIEW_PENDING.value):
                logger.warning("retry of an alert already sent; not sending again", extra={"event_id": event_id})
                return {
                    "decision": previous["decision"],
                    "event_id": event_id,
                    "message_ids": list(previous.get("message_ids", [])),
                    "review_id": previous.get("review_id"),
                    "recovered": True,
                }
        hour = int(now // 3600)
        within_budget = claim.retaken or self.store.take_budget(
            f"budget#{match.device_id}#{hour}", self.settings.device_alerts_per_hour, (hour + 2) * 3600
        )
        try:
            details = self.lookup.details(person.source, person.case_id, person.display_name)
            if details.resolved:
                self.store.release_cooldown(cooldown_key, event_id)
                return self._decided(match, event, Decision.CASE_RESOLVED, now)
            record, sent = self.review.open(
                match, person, details, now, rate_limited=not within_budget, skip=already_sent.keys()
            )
            sent = already_sent | sent
        except PartialSend as partial:
            # Keep the cooldown claim, so the retry is recognised and resumes after these.
            self._decided(match, event, Decision.PARTIAL, now, sent_to=already_sent | partial.sent)
            raise partial.__cause__ or partial from None
        except Exception:
            self._release_quietly(cooldown_key, event_id)
            raise
        if not within_budget:
            logger.warning("device over its hourly alert budget", extra={"device_id": match.device_id})
            decision = Decision.RATE_LIMITED
        else:
            decision = Decision.SENT if record.mode == "after" else Decision.REVIEW_PENDING
        return self._decided(
            match,
            event,
            decision,
            now,
            review_id=record.review_id,
            message_ids=list(sent.values()),
            sent_to=sent,
            segments=segment_count(self.review.responder_message(record, "en", False).sms),
            details_fresh=details.fresh,
        )

    def _decided(self, match: MatchEvent, event: dict, decision: Decision, now: float, **facts: Any) -> dict:
        result = {"decision": decision.value, "event_id": str(match.event_id), **facts}
        audit = {
            "event_id": str(match.event_id),
            "decision": decision.value,
            "decided_at": datetime.fromtimestamp(now, UTC).isoformat(),
            "event": event,  # without the face crop
            **facts,
            "expires_at": int(now) + self.settings.audit_ttl_days * 24 * 3600,
        }
        try:
            self.store.write_audit(audit)
        except Exception:
            if decision not in (Decision.SENT, Decision.REVIEW_PENDING, Decision.PARTIAL):
                raise  # nothing was sent: failing lets AWS retry the whole decision
            # The SMS is out: raising now would make the retry text again. Keep the
            # record in the log instead.
            logger.exception("audit write failed after the SMS was sent", extra={"audit": audit})
        logger.info("alert decision", extra=result)
        return result

    def _release_quietly(self, key: str, event_id: str) -> None:
        try:
            self.store.release_cooldown(key, event_id)
        except Exception:
            # The retry of this same event may still claim it (the claim accepts its own id).
            logger.exception("could not release the cooldown claim", extra={"cooldown_key": key})


def _fingerprint(event: Any) -> dict[str, Any]:
    """Enough to find a rejected payload again without logging its content."""
    if isinstance(event, dict) and isinstance(event.get("payload"), str):
        raw = event["payload"].encode()
        return {"topic": str(event.get("topic"))[:256], "payload_b64_chars": len(raw)}
    raw = repr(event).encode()[:MAX_EVENT_BYTES]
    return {"event_type": type(event).__name__, "event_sha256": hashlib.sha256(raw).hexdigest()}


def source_fetcher(settings: AlertSettings) -> CaseFetcher | None:
    """``fetch_case`` of the source adapters, built for a quick lookup (one attempt)."""
    if not settings.source_urls:
        return None
    from sync_service.sources import make_adapter

    adapters: dict[str, Any] = {}

    def fetch(source: str, case_id: str):
        if source not in settings.source_urls:
            return None
        if source not in adapters:
            adapters[source] = make_adapter(
                source,
                settings.source_urls[source],
                rate_limit=20.0,
                read_timeout=settings.case_lookup_timeout,
                max_attempts=1,
            )
        return adapters[source].fetch_case(case_id)

    return fetch


def build_service(
    settings: AlertSettings, fetch: CaseFetcher | None | bool = True, clock: Callable[[], float] = time.time
) -> AlertService:
    """The service for ``settings.backend``; ``fetch=True`` uses the configured source APIs."""
    fetcher = source_fetcher(settings) if fetch is True else (fetch or None)
    lookup = CaseLookup(fetcher, settings.case_lookup_timeout)
    galleries = PublishedGalleries(settings.gallery_url) if settings.gallery_url else None
    if galleries is None:
        logger.warning("MPD_GALLERY_URL is not set: events are not checked against the published galleries")
    store, persistence, review = build_stores(settings, clock)
    return AlertService(settings, store, persistence, lookup, review, galleries, clock)


def build_stores(
    settings: AlertSettings, clock: Callable[[], float] = time.time
) -> tuple[DecisionStore, BasePersistenceLayer, ReviewService]:
    """The decision store, idempotency layer and review service of ``settings.backend``."""
    photos = None
    if settings.store_url:
        try:
            photos = open_store(settings.store_url)
        except (StoreError, ValueError) as error:
            raise ValueError(f"MPD_STORE_URL: {error}") from None
    if settings.backend == "aws":
        import boto3

        dynamodb = boto3.client("dynamodb", config=BOTO_CONFIG)
        decisions = DynamoDecisionStore(dynamodb, settings.cooldown_table, settings.audit_table)
        reviews = DynamoReviewStore(
            dynamodb,
            boto3.client("s3", config=BOTO_CONFIG),
            settings.review_table,
            settings.review_audit_table,
            settings.crop_bucket,
            settings.crop_kms_key,
        )
        sender = SnsSender(
            boto3.client("sns", config=BOTO_CONFIG),
            boto3.client("ses", config=BOTO_CONFIG) if settings.mail_from else None,
            settings.mail_from,
        )
        persistence = DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=dynamodb)
    else:
        tables = SqliteTables(settings.database)
        decisions = SqliteDecisionStore(tables)
        reviews = SqliteReviewStore(tables, settings.local_dir / "crop.key")
        sender = FileSmsSink(settings.sms_sink, settings.local_dir / "mail")
        persistence = SqlitePersistenceLayer(tables)
    return decisions, persistence, ReviewService(settings, reviews, decisions, sender, photos, clock)


_service: AlertService | None = None


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """AWS Lambda entry point (template.yaml: ``sync_service.alerts.handler.lambda_handler``)."""
    global _service
    if _service is None:  # built once per container, reused while warm
        _service = build_service(AlertSettings.from_env())
    return _service.handle(event, context)
