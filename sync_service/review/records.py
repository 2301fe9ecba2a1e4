"""Review records, the audit log of views and decisions, and the camera crops.

A review record holds what a reviewer needs to decide (cloud-side names, fresh case
details, similarity against the threshold, references to the case photos in the
store) and its state: pending -> confirmed | dismissed | expired, with who decided
and when. A decision is one conditional write (``state = pending``), so of two
reviewers clicking at once exactly one wins and the other is told.

Two backends with the same semantics: SQLite on one machine (the embedded default,
crops encrypted with a local key) and DynamoDB + S3 with SSE-KMS on AWS. Crops
expire (``crop_ttl_days``): S3 by a lifecycle rule, locally by the sweep, and in both
an expired crop is never served.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, Field

from sync_service.alerts.stores import SqliteTables, _is_conditional_failure
from sync_service.sources.records import AgencyContact


class State(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    DISMISSED = "dismissed"
    EXPIRED = "expired"


# Short links: 10 characters of a lowercase base32 alphabet (50 bits), no look-alikes.
_ID_ALPHABET = "abcdefghijkmnpqrstuvwxyz23456789"


def new_review_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(10))


def is_review_id(value: str) -> bool:
    return len(value) == 10 and all(char in _ID_ALPHABET for char in value)


class CasePhoto(BaseModel):
    model_config = ConfigDict(frozen=True)
    key: str  # store key
    sha256: str
    category: str = ""


# Notifications sent after the alert was opened, each retried until delivered.
RESPONDERS = "responders"  # after a confirmation (review: before, or a rate-limited alert)
FOLLOWUP = "followup"  # after a dismissal of an alert responders were texted about (review: after)
ESCALATION = "escalation"  # the second reviewers, when nobody decided in time


class Delivery(BaseModel):
    """One notification to all of its recipients: who got it (never sent to them again),
    who not yet, and when it is tried next. ``due`` until everyone got it; ``failed``
    when the retries gave up; ``cancelled`` when it no longer applies."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["due", "delivered", "failed", "cancelled"] = "due"
    sent: dict[str, str] = Field(default_factory=dict)  # address -> message id
    missing: list[str] = Field(default_factory=list)  # addresses the last attempt did not reach
    attempts: int = 0
    created_ms: int
    next_ms: int  # when the next attempt is due; while one runs, nobody else takes it before
    error: str = ""


class ReviewRecord(BaseModel):
    """One alert awaiting, or having had, a person's look."""

    model_config = ConfigDict(extra="ignore")

    review_id: str
    event_id: str
    site: str
    site_name: str
    mode: str  # "before" | "after"
    timezone: str = "UTC"
    device_id: str
    device_name: str
    camera_name: str
    # The person, from the gallery the cloud built and the fresh source lookup.
    person_id: str
    source: str
    case_id: str  # canonical
    name: str
    sex: str = ""
    age_now: str = ""
    age_missing: str = ""
    last_seen_date: date | None = None
    last_seen_place: str = ""
    case_link: str = ""
    details_fresh: bool = False
    case_photos: list[CasePhoto] = Field(default_factory=list)
    # The case's investigating agencies (fresh lookup, else the stored case), names cleaned.
    agencies: list[AgencyContact] = Field(default_factory=list)
    # The match.
    best_similarity: float
    mean_similarity: float
    threshold: float
    frames_used: int
    first_seen: datetime
    last_seen: datetime
    gallery_version: str
    model_id: str
    has_crop: bool = False
    crop_expires_at: int | None = None  # epoch seconds
    rate_limited: bool = False  # the device was over its hourly alert budget: nobody was texted
    # State.
    state: State = State.PENDING
    created_ms: int
    decided_by: str | None = None
    decided_at: datetime | None = None
    note: str = ""
    # ``review: after``: responders were texted at once, so a dismissal owes them a follow-up.
    # (Escalations and follow-ups are tracked in ``deliveries``; older records' escalated_at
    # and followup_sent_at are ignored.)
    responders_notified_at: datetime | None = None
    deliveries: dict[str, Delivery] = Field(default_factory=dict)  # kind -> its notification
    deliveries_rev: int = 0  # bumped by every change of ``deliveries`` (compare-and-set)
    expires_at: int  # the record's TTL (epoch seconds)

    @property
    def sort_key(self) -> str:
        """Descending order: pending first, newest first within each group."""
        return f"{1 if self.state == State.PENDING else 0}#{self.created_ms:015d}"

    @property
    def crop_available(self) -> bool:
        return self.has_crop and (self.crop_expires_at or 0) > time.time()

    @property
    def retry_ms(self) -> int | None:
        """When the earliest notification still to deliver is due (indexed for the sweep)."""
        due = [d.next_ms for d in self.deliveries.values() if d.status == "due"]
        return min(due) if due else None

    @property
    def delivery_problem(self) -> str:
        """A line for the list page when a notification did not reach everyone."""
        states = {
            d.status for d in self.deliveries.values() if d.status == "failed" or (d.status == "due" and d.attempts)
        }
        if "failed" in states:
            return "A notification FAILED: someone was not told."
        return "A notification is not delivered yet: retrying." if states else ""


def _decided(
    record: ReviewRecord, state: State, by: str, at: datetime, note: str, plan: DeliveryPlan | None
) -> ReviewRecord:
    update: dict[str, Any] = {"state": state, "decided_by": by, "decided_at": at, "note": note}
    changes = plan(record) if plan else {}
    if changes:
        update |= {"deliveries": record.deliveries | changes, "deliveries_rev": record.deliveries_rev + 1}
    return record.model_copy(update=update)


class Decided(Exception):
    """The record was no longer pending: someone else decided first."""

    def __init__(self, record: ReviewRecord) -> None:
        super().__init__(f"already {record.state.value} by {record.decided_by} at {record.decided_at}")
        self.record = record


# What a decision adds to (or changes in) the record's deliveries, given the record as
# the decision finds it: part of the same conditional write.
DeliveryPlan = Callable[[ReviewRecord], dict[str, Delivery]]


class ReviewStore(Protocol):
    def create(self, record: ReviewRecord) -> None: ...
    def get(self, review_id: str) -> ReviewRecord | None: ...
    def decide(
        self, review_id: str, state: State, by: str, at: datetime, note: str, plan: DeliveryPlan | None = None
    ) -> ReviewRecord: ...
    def update_deliveries(self, record: ReviewRecord, deliveries: dict[str, Delivery]) -> ReviewRecord | None:
        """Replace ``deliveries`` if nobody changed them since ``record`` was read; else None."""
        ...

    def deliveries_due(self, before_ms: int) -> list[ReviewRecord]:
        """Records with a notification due before ``before_ms``."""
        ...

    def mark(self, review_id: str, field: str, at: datetime) -> bool: ...
    def page(self, sites: Iterable[str], before: str | None, limit: int) -> list[ReviewRecord]: ...
    def pending_before(self, created_ms: int) -> list[ReviewRecord]: ...
    def count(self, sites: Iterable[str]) -> dict[str, int]: ...
    def audit(self, subject: str, actor: str, action: str, detail: str = "") -> None: ...
    def audit_trail(self, subject: str) -> list[dict[str, Any]]: ...
    def put_crop(self, review_id: str, jpeg: bytes, expires_at: int) -> None: ...
    def get_crop(self, review_id: str) -> bytes | None: ...


# Fields a ``mark`` may set once.
MARKS = ("responders_notified_at",)

# --- one machine ------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review (
    review_id TEXT PRIMARY KEY, site TEXT NOT NULL, state TEXT NOT NULL, sort_key TEXT NOT NULL,
    created_ms INTEGER NOT NULL, record TEXT NOT NULL, expires_at INTEGER, retry_ms INTEGER);
CREATE INDEX IF NOT EXISTS review_by_site ON review (site, sort_key);
CREATE INDEX IF NOT EXISTS review_pending ON review (state, created_ms);
CREATE TABLE IF NOT EXISTS review_audit (
    subject TEXT NOT NULL, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, detail TEXT);
CREATE INDEX IF NOT EXISTS review_audit_subject ON review_audit (subject, at_ms);
CREATE TABLE IF NOT EXISTS review_crop (review_id TEXT PRIMARY KEY, data BLOB NOT NULL, expires_at INTEGER NOT NULL);
"""


def load_or_create_key(path: Path) -> bytes:
    """The local crop key (Fernet: AES-128-CBC + HMAC-SHA256), created 0600 on first use."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    return key


class SqliteReviewStore:
    def __init__(self, tables: SqliteTables, key_file: Path) -> None:
        self.tables = tables
        with tables.connect() as db:
            db.executescript(_SCHEMA)
            if "retry_ms" not in {row[1] for row in db.execute("PRAGMA table_info(review)")}:
                db.execute("ALTER TABLE review ADD COLUMN retry_ms INTEGER")  # a store made before retries
            db.execute("CREATE INDEX IF NOT EXISTS review_retry ON review (retry_ms) WHERE retry_ms IS NOT NULL")
        self.fernet = Fernet(load_or_create_key(key_file))

    def _row(self, record: ReviewRecord) -> dict[str, Any]:
        return {
            "id": record.review_id,
            "site": record.site,
            "state": record.state.value,
            "sort_key": record.sort_key,
            "created_ms": record.created_ms,
            "record": record.model_dump_json(),
            "expires_at": record.expires_at,
            "retry_ms": record.retry_ms,
        }

    def create(self, record: ReviewRecord) -> None:
        with self.tables.connect() as db:
            db.execute(
                "INSERT INTO review (review_id, site, state, sort_key, created_ms, record, expires_at, retry_ms)"
                " VALUES (:id, :site, :state, :sort_key, :created_ms, :record, :expires_at, :retry_ms)",
                self._row(record),
            )

    def get(self, review_id: str) -> ReviewRecord | None:
        with self.tables.connect() as db:
            return self._read(db, review_id)

    @staticmethod
    def _read(db, review_id: str) -> ReviewRecord | None:
        row = db.execute("SELECT record FROM review WHERE review_id = ?", (review_id,)).fetchone()
        return ReviewRecord.model_validate_json(row[0]) if row else None

    def decide(
        self, review_id: str, state: State, by: str, at: datetime, note: str, plan: DeliveryPlan | None = None
    ) -> ReviewRecord:
        with self.tables.transaction() as db:
            record = self._read(db, review_id)
            if record is None:
                raise KeyError(review_id)
            if record.state != State.PENDING:
                raise Decided(record)  # nothing was written: leaving rolls back an empty transaction
            record = _decided(record, state, by, at, note, plan)
            db.execute(
                "UPDATE review SET state = :state, sort_key = :sort_key, record = :record, retry_ms = :retry_ms"
                " WHERE review_id = :id AND state = 'pending'",
                self._row(record),
            )
        return record

    def update_deliveries(self, record: ReviewRecord, deliveries: dict[str, Delivery]) -> ReviewRecord | None:
        with self.tables.transaction() as db:
            current = self._read(db, record.review_id)
            if current is None or current.deliveries_rev != record.deliveries_rev:
                return None
            current = current.model_copy(update={"deliveries": deliveries, "deliveries_rev": record.deliveries_rev + 1})
            db.execute(
                "UPDATE review SET record = :record, retry_ms = :retry_ms WHERE review_id = :id", self._row(current)
            )
        return current

    def deliveries_due(self, before_ms: int) -> list[ReviewRecord]:
        return self._select(
            "SELECT record FROM review WHERE retry_ms IS NOT NULL AND retry_ms <= ? ORDER BY retry_ms", [before_ms]
        )

    def mark(self, review_id: str, field: str, at: datetime) -> bool:
        """Set ``field`` once; False if it was already set (someone else did the work)."""
        if field not in MARKS:
            raise ValueError(field)
        with self.tables.transaction() as db:
            record = self._read(db, review_id)
            if record is None:
                raise KeyError(review_id)
            if getattr(record, field) is not None:
                return False
            record = record.model_copy(update={field: at})
            db.execute("UPDATE review SET record = ? WHERE review_id = ?", (record.model_dump_json(), review_id))
        return True

    def page(self, sites: Iterable[str], before: str | None, limit: int) -> list[ReviewRecord]:
        sites = sorted(set(sites))
        if not sites:
            return []
        marks = ",".join("?" * len(sites))
        query = f"SELECT record FROM review WHERE site IN ({marks})"
        args: list[Any] = list(sites)
        if before:
            query += " AND sort_key < ?"
            args.append(before)
        query += " ORDER BY sort_key DESC LIMIT ?"
        args.append(limit)
        return self._select(query, args)

    def pending_before(self, created_ms: int) -> list[ReviewRecord]:
        return self._select(
            "SELECT record FROM review WHERE state = 'pending' AND created_ms < ? ORDER BY created_ms", [created_ms]
        )

    def _select(self, query: str, args: list[Any]) -> list[ReviewRecord]:
        """The records a ``SELECT record ...`` query returns."""
        with self.tables.connect() as db:
            return [ReviewRecord.model_validate_json(row[0]) for row in db.execute(query, args).fetchall()]

    def count(self, sites: Iterable[str]) -> dict[str, int]:
        sites = sorted(set(sites))
        if not sites:
            return {}
        marks = ",".join("?" * len(sites))
        with self.tables.connect() as db:
            rows = db.execute(f"SELECT state, COUNT(*) FROM review WHERE site IN ({marks}) GROUP BY state", sites)
            return dict(rows.fetchall())

    def audit(self, subject: str, actor: str, action: str, detail: str = "") -> None:
        with self.tables.connect() as db:
            db.execute(
                "INSERT INTO review_audit (subject, at_ms, actor, action, detail) VALUES (?, ?, ?, ?, ?)",
                (subject, int(time.time() * 1000), actor, action, detail[:500]),
            )

    def audit_trail(self, subject: str) -> list[dict[str, Any]]:
        with self.tables.connect() as db:
            rows = db.execute(
                "SELECT at_ms, actor, action, detail FROM review_audit WHERE subject = ? ORDER BY at_ms, rowid",
                (subject,),
            ).fetchall()
        return [{"at_ms": r[0], "actor": r[1], "action": r[2], "detail": r[3] or ""} for r in rows]

    def put_crop(self, review_id: str, jpeg: bytes, expires_at: int) -> None:
        with self.tables.connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO review_crop (review_id, data, expires_at) VALUES (?, ?, ?)",
                (review_id, self.fernet.encrypt(jpeg), expires_at),
            )

    def get_crop(self, review_id: str) -> bytes | None:
        with self.tables.connect() as db:
            row = db.execute("SELECT data, expires_at FROM review_crop WHERE review_id = ?", (review_id,)).fetchone()
        if row is None or row[1] <= time.time():
            return None
        try:
            return self.fernet.decrypt(row[0])
        except InvalidToken:
            return None

    def purge_expired(self, now: float | None = None) -> int:
        """Delete expired crops and records (DynamoDB TTL and S3 lifecycle do this on AWS)."""
        now = int(now if now is not None else time.time())
        with self.tables.connect() as db:
            crops = db.execute("DELETE FROM review_crop WHERE expires_at <= ?", (now,)).rowcount
            records = db.execute("DELETE FROM review WHERE expires_at <= ?", (now,)).rowcount
        return crops + records


# --- AWS ----------------------------------------------------------------------------------

BY_SITE_INDEX = "by_site"  # hash site, range sort_key
PENDING_INDEX = "pending"  # sparse: hash pending ("1" while pending), range created_ms
RETRY_INDEX = "retry"  # sparse: hash retry ("1" while a notification is due), range retry_ms


def _item(record: ReviewRecord) -> dict[str, Any]:
    from boto3.dynamodb.types import TypeSerializer

    plain = json.loads(record.model_dump_json(), parse_float=Decimal)
    plain["sort_key"] = record.sort_key
    if record.state == State.PENDING:
        plain["pending"] = "1"
    if record.retry_ms is not None:
        plain |= {"retry": "1", "retry_ms": record.retry_ms}
    serializer = TypeSerializer()
    return {name: serializer.serialize(value) for name, value in plain.items() if value is not None}


DELIVERY_RETRIES = 8  # compare-and-set rounds before giving up (each loses only to a concurrent change)
_REV_CONDITION = "(attribute_not_exists(deliveries_rev) OR deliveries_rev = :old_rev)"


def _delivery_update(record: ReviewRecord) -> tuple[str, list[str], dict[str, Any]]:
    """SET clause, REMOVE attributes and values that write ``record``'s deliveries and their index keys."""
    from boto3.dynamodb.types import TypeSerializer

    deliveries = json.loads(json.dumps({k: d.model_dump(mode="json") for k, d in record.deliveries.items()}))
    serializer = TypeSerializer()
    values = {":deliveries": serializer.serialize(deliveries), ":rev": {"N": str(record.deliveries_rev)}}
    sets = "deliveries = :deliveries, deliveries_rev = :rev"
    if record.retry_ms is None:
        return sets, ["retry", "retry_ms"], values
    values |= {":one": {"S": "1"}, ":retry_ms": {"N": str(record.retry_ms)}}
    return sets + ", retry = :one, retry_ms = :retry_ms", [], values


def _record(item: dict[str, Any]) -> ReviewRecord:
    from boto3.dynamodb.types import TypeDeserializer

    deserializer = TypeDeserializer()
    plain = {name: deserializer.deserialize(value) for name, value in item.items()}
    return ReviewRecord.model_validate(json.loads(json.dumps(plain, default=_number)))


def _number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(type(value))


class DynamoReviewStore:
    def __init__(
        self, dynamodb: Any, s3: Any, table: str, audit_table: str, crop_bucket: str | None, kms_key: str | None
    ) -> None:
        self.dynamodb, self.s3 = dynamodb, s3
        self.table, self.audit_table = table, audit_table
        self.crop_bucket, self.kms_key = crop_bucket, kms_key

    def create(self, record: ReviewRecord) -> None:
        self.dynamodb.put_item(
            TableName=self.table, Item=_item(record), ConditionExpression="attribute_not_exists(review_id)"
        )

    def get(self, review_id: str) -> ReviewRecord | None:
        item = self.dynamodb.get_item(
            TableName=self.table, Key={"review_id": {"S": review_id}}, ConsistentRead=True
        ).get("Item")
        return _record(item) if item else None

    def decide(
        self, review_id: str, state: State, by: str, at: datetime, note: str, plan: DeliveryPlan | None = None
    ) -> ReviewRecord:
        from botocore.exceptions import ClientError

        # Conditional on the state (one decision wins) and on the deliveries being as read
        # (the sweep may be updating one at this moment: then read again and retry).
        for _ in range(DELIVERY_RETRIES):
            current = self.get(review_id)
            if current is None:
                raise KeyError(review_id)
            if current.state != State.PENDING:
                raise Decided(current)
            decided = _decided(current, state, by, at, note, plan)
            values = {
                ":state": {"S": state.value},
                ":pending": {"S": State.PENDING.value},
                ":sort_key": {"S": decided.sort_key},
                ":by": {"S": by},
                ":at": {"S": at.isoformat()},
                ":note": {"S": note},
            }
            sets, removes, delivery_values = _delivery_update(decided)
            try:
                self.dynamodb.update_item(
                    TableName=self.table,
                    Key={"review_id": {"S": review_id}},
                    UpdateExpression="SET #state = :state, sort_key = :sort_key, decided_by = :by, decided_at = :at,"
                    f" note = :note, {sets} REMOVE {', '.join(['pending', *removes])}",
                    ConditionExpression=f"#state = :pending AND {_REV_CONDITION}",
                    ExpressionAttributeNames={"#state": "state"},
                    ExpressionAttributeValues=values
                    | delivery_values
                    | {":old_rev": {"N": str(current.deliveries_rev)}},
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            except ClientError as error:
                if not _is_conditional_failure(error):
                    raise
                old = _record(error.response["Item"])
                if old.state != State.PENDING:
                    raise Decided(old) from None
                continue  # only the deliveries changed under us
            return decided
        raise RuntimeError(f"review {review_id}: its notifications kept changing; decision not written")

    def update_deliveries(self, record: ReviewRecord, deliveries: dict[str, Delivery]) -> ReviewRecord | None:
        from botocore.exceptions import ClientError

        updated = record.model_copy(update={"deliveries": deliveries, "deliveries_rev": record.deliveries_rev + 1})
        sets, removes, values = _delivery_update(updated)
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"review_id": {"S": record.review_id}},
                UpdateExpression=f"SET {sets}" + (f" REMOVE {', '.join(removes)}" if removes else ""),
                ConditionExpression=f"attribute_exists(review_id) AND {_REV_CONDITION}",
                ExpressionAttributeValues=values | {":old_rev": {"N": str(record.deliveries_rev)}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return None
        return updated

    def _sparse_query(self, index: str, condition: str, cutoff: int) -> list[ReviewRecord]:
        """Every record of a sparse index (partition key "1") up to ``cutoff``, all pages."""
        pages = self.dynamodb.get_paginator("query").paginate(
            TableName=self.table,
            IndexName=index,
            KeyConditionExpression=condition,
            ExpressionAttributeValues={":one": {"S": "1"}, ":cutoff": {"N": str(cutoff)}},
        )
        return [_record(item) for page in pages for item in page.get("Items", [])]

    def deliveries_due(self, before_ms: int) -> list[ReviewRecord]:
        return self._sparse_query(RETRY_INDEX, "retry = :one AND retry_ms <= :cutoff", before_ms)

    def mark(self, review_id: str, field: str, at: datetime) -> bool:
        from botocore.exceptions import ClientError

        if field not in MARKS:
            raise ValueError(field)
        try:
            self.dynamodb.update_item(
                TableName=self.table,
                Key={"review_id": {"S": review_id}},
                UpdateExpression=f"SET {field} = :at",
                ConditionExpression=f"attribute_exists(review_id) AND attribute_not_exists({field})",
                ExpressionAttributeValues={":at": {"S": at.isoformat()}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return False
        return True

    def page(self, sites: Iterable[str], before: str | None, limit: int) -> list[ReviewRecord]:
        records: list[ReviewRecord] = []
        for site in sorted(set(sites)):
            condition = "site = :site" + (" AND sort_key < :before" if before else "")
            values = {":site": {"S": site}} | ({":before": {"S": before}} if before else {})
            response = self.dynamodb.query(
                TableName=self.table,
                IndexName=BY_SITE_INDEX,
                KeyConditionExpression=condition,
                ExpressionAttributeValues=values,
                ScanIndexForward=False,
                Limit=limit,
            )
            records += [_record(item) for item in response.get("Items", [])]
        records.sort(key=lambda r: r.sort_key, reverse=True)
        return records[:limit]

    def pending_before(self, created_ms: int) -> list[ReviewRecord]:
        return self._sparse_query(PENDING_INDEX, "pending = :one AND created_ms < :cutoff", created_ms)

    def count(self, sites: Iterable[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for site in set(sites):
            response = self.dynamodb.query(
                TableName=self.table,
                IndexName=BY_SITE_INDEX,
                KeyConditionExpression="site = :site AND begins_with(sort_key, :pending)",
                ExpressionAttributeValues={":site": {"S": site}, ":pending": {"S": "1#"}},
                Select="COUNT",
            )
            counts["pending"] = counts.get("pending", 0) + response["Count"]
        return counts

    def audit(self, subject: str, actor: str, action: str, detail: str = "") -> None:
        now_ms = int(time.time() * 1000)
        self.dynamodb.put_item(
            TableName=self.audit_table,
            Item={
                "subject": {"S": subject},
                "at": {"S": f"{now_ms:015d}#{secrets.token_hex(4)}"},
                "actor": {"S": actor},
                "action": {"S": action},
                "detail": {"S": detail[:500]},
                "expires_at": {"N": str(now_ms // 1000 + 365 * 24 * 3600)},
            },
        )

    def audit_trail(self, subject: str) -> list[dict[str, Any]]:
        response = self.dynamodb.query(
            TableName=self.audit_table,
            KeyConditionExpression="subject = :subject",
            ExpressionAttributeValues={":subject": {"S": subject}},
        )
        return [
            {
                "at_ms": int(item["at"]["S"].split("#")[0]),
                "actor": item["actor"]["S"],
                "action": item["action"]["S"],
                "detail": item.get("detail", {}).get("S", ""),
            }
            for item in response.get("Items", [])
        ]

    def put_crop(self, review_id: str, jpeg: bytes, expires_at: int) -> None:
        if not self.crop_bucket:
            return
        extra = {"SSEKMSKeyId": self.kms_key} if self.kms_key else {}
        self.s3.put_object(
            Bucket=self.crop_bucket,
            Key=f"crops/{review_id}.jpg",
            Body=jpeg,
            ContentType="image/jpeg",
            ServerSideEncryption="aws:kms",
            Metadata={"expires-at": str(expires_at)},
            **extra,
        )

    def get_crop(self, review_id: str) -> bytes | None:
        from botocore.exceptions import ClientError

        if not self.crop_bucket:
            return None
        try:
            response = self.s3.get_object(Bucket=self.crop_bucket, Key=f"crops/{review_id}.jpg")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        # The lifecycle rule deletes within a day of expiry; never serve one past it.
        if int(response.get("Metadata", {}).get("expires-at", "0")) <= time.time():
            return None
        return response["Body"].read()


def create_review_tables(client: Any, table: str, audit_table: str) -> None:
    """Create the review tables (with TTL) if missing: for moto, as template.yaml does in AWS."""
    existing = set(client.list_tables()["TableNames"])
    if table not in existing:
        client.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "review_id", "KeyType": "HASH"}],
            AttributeDefinitions=[
                {"AttributeName": "review_id", "AttributeType": "S"},
                {"AttributeName": "site", "AttributeType": "S"},
                {"AttributeName": "sort_key", "AttributeType": "S"},
                {"AttributeName": "pending", "AttributeType": "S"},
                {"AttributeName": "created_ms", "AttributeType": "N"},
                {"AttributeName": "retry", "AttributeType": "S"},
                {"AttributeName": "retry_ms", "AttributeType": "N"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": BY_SITE_INDEX,
                    "KeySchema": [
                        {"AttributeName": "site", "KeyType": "HASH"},
                        {"AttributeName": "sort_key", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": PENDING_INDEX,
                    "KeySchema": [
                        {"AttributeName": "pending", "KeyType": "HASH"},
                        {"AttributeName": "created_ms", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
                {
                    "IndexName": RETRY_INDEX,
                    "KeySchema": [
                        {"AttributeName": "retry", "KeyType": "HASH"},
                        {"AttributeName": "retry_ms", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=table)
        client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
    if audit_table not in existing:
        client.create_table(
            TableName=audit_table,
            KeySchema=[{"AttributeName": "subject", "KeyType": "HASH"}, {"AttributeName": "at", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "subject", "AttributeType": "S"},
                {"AttributeName": "at", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        client.get_waiter("table_exists").wait(TableName=audit_table)
        client.update_time_to_live(
            TableName=audit_table, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
        )
