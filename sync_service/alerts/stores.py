"""Where alert decisions are kept, and where SMS go: AWS, or files on one machine.

Three small tables, each with the same conditional semantics in both backends:

* idempotency (Powertools' record per event id: in progress, completed, expiry);
* cooldown (one item per case and device: who texted last, and when);
* audit (one item per event: the decision, the SMS message ids; expires by TTL).

DynamoDB does each decision in one conditional write; the local backend does the
same in one SQLite statement (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``), so
the decision logic in ``handler.py`` is one code path for both.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from aws_lambda_powertools.utilities.idempotency import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from botocore.config import Config
from botocore.exceptions import ClientError

# botocore's "standard" retry mode retries throttling, 5xx and connection errors with
# jittered backoff: the AWS-aware retry policy for every DynamoDB and SNS call here.
BOTO_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3})


@dataclass(frozen=True)
class TableSpec:
    """A table's key and TTL attribute (template.yaml declares the same; a test checks)."""

    key: str
    ttl_attribute: str


IDEMPOTENCY = TableSpec("id", "expiration")  # Powertools' default attribute names
COOLDOWN = TableSpec("cooldown_key", "expires_at")
AUDIT = TableSpec("event_id", "expires_at")


@dataclass(frozen=True)
class CooldownClaim:
    granted: bool
    holder_event_id: str | None = None  # who holds the cooldown when not granted
    holder_sent_ms: int | None = None
    # Granted to an event that already held it: a retry after a crash, which may have
    # sent its SMS before it died.
    retaken: bool = False


class DecisionStore(Protocol):
    def claim_cooldown(
        self, key: str, event_id: str, now_ms: int, cooldown_ms: int, expires_at: int
    ) -> CooldownClaim: ...

    def release_cooldown(self, key: str, event_id: str) -> None: ...

    def write_audit(self, record: dict[str, Any]) -> None: ...

    def read_audit(self, event_id: str) -> dict[str, Any] | None: ...

    def take_budget(self, key: str, limit: int, expires_at: int) -> bool:
        """Count one use of ``key`` (a device's hour); False once ``limit`` were taken."""
        ...

    def suppress(self, key: str, until_ms: int, by: str) -> None:
        """Silence ``key`` (a person at a site) until ``until_ms``."""
        ...

    def suppressed_until(self, key: str, now_ms: int) -> tuple[int, str] | None:
        """(until_ms, by) while ``key`` is silenced, else None."""
        ...


@dataclass(frozen=True)
class Attachment:
    filename: str
    data: bytes
    subtype: str = "jpeg"  # image/<subtype>


@dataclass(frozen=True)
class Message:
    """One notification: the SMS text, and for e-mail recipients a subject, body and photos."""

    sms: str
    subject: str = ""
    email_text: str = ""
    attachments: tuple[Attachment, ...] = ()

    def email(self, sender: str, to: str) -> bytes:
        from email.message import EmailMessage

        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = sender, to, self.subject or self.sms[:60]
        mail.set_content(self.email_text or self.sms)
        for attachment in self.attachments:
            mail.add_attachment(
                attachment.data, maintype="image", subtype=attachment.subtype, filename=attachment.filename
            )
        return mail.as_bytes()


def is_email(recipient: str) -> bool:
    return "@" in recipient and not recipient.startswith("arn:")


class SmsSender(Protocol):
    sends_email: bool  # False: e-mail addresses are skipped (no mail sender configured)

    def send(self, message: Message, recipients: Sequence[str], skip: Collection[str] = ()) -> dict[str, str]:
        """Send to every recipient not in ``skip`` (E.164 numbers and SNS topic ARNs get the
        SMS text, e-mail addresses the e-mail); return recipient -> message id.

        Raises ``PartialSend`` when some recipients got it and then one failed.
        """
        ...


class PartialSend(Exception):
    """Some recipients got the SMS, then sending failed (the cause is chained)."""

    def __init__(self, sent: dict[str, str]) -> None:
        super().__init__(f"SMS sent to {len(sent)} recipient(s) before failing")
        self.sent = sent


# --- AWS ------------------------------------------------------------------------------


def _is_conditional_failure(error: ClientError) -> bool:
    return error.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


class DynamoDecisionStore:
    def __init__(self, client: Any, cooldown_table: str, audit_table: str) -> None:
        self.client = client
        self.cooldown_table = cooldown_table
        self.audit_table = audit_table

    def claim_cooldown(self, key: str, event_id: str, now_ms: int, cooldown_ms: int, expires_at: int) -> CooldownClaim:
        # One atomic conditional update: free, expired, or already ours (a retry of the
        # same event after a failure must be able to take it again).
        try:
            response = self.client.update_item(
                TableName=self.cooldown_table,
                Key={COOLDOWN.key: {"S": key}},
                UpdateExpression="SET last_sent_ms = :now, last_event_id = :event, expires_at = :expires",
                ConditionExpression="attribute_not_exists(last_sent_ms) OR last_sent_ms < :cutoff OR last_event_id = :event",
                ExpressionAttributeValues={
                    ":now": {"N": str(now_ms)},
                    ":cutoff": {"N": str(now_ms - cooldown_ms)},
                    ":event": {"S": event_id},
                    ":expires": {"N": str(expires_at)},
                },
                ReturnValues="ALL_OLD",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            old = error.response.get("Item", {})
            return CooldownClaim(
                False,
                old.get("last_event_id", {}).get("S"),
                int(old["last_sent_ms"]["N"]) if "last_sent_ms" in old else None,
            )
        previous = response.get("Attributes", {}).get("last_event_id", {}).get("S")
        return CooldownClaim(True, retaken=previous == event_id)

    def release_cooldown(self, key: str, event_id: str) -> None:
        try:
            self.client.delete_item(
                TableName=self.cooldown_table,
                Key={COOLDOWN.key: {"S": key}},
                ConditionExpression="last_event_id = :event",
                ExpressionAttributeValues={":event": {"S": event_id}},
            )
        except ClientError as error:
            if not _is_conditional_failure(error):  # someone else holds it now: nothing to undo
                raise

    def take_budget(self, key: str, limit: int, expires_at: int) -> bool:
        try:
            self.client.update_item(
                TableName=self.cooldown_table,
                Key={COOLDOWN.key: {"S": key}},
                UpdateExpression="ADD uses :one SET expires_at = :expires",
                ConditionExpression="attribute_not_exists(uses) OR uses < :limit",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":limit": {"N": str(limit)},
                    ":expires": {"N": str(expires_at)},
                },
            )
        except ClientError as error:
            if not _is_conditional_failure(error):
                raise
            return False
        return True

    def suppress(self, key: str, until_ms: int, by: str) -> None:
        self.client.put_item(
            TableName=self.cooldown_table,
            Item={
                COOLDOWN.key: {"S": key},
                "until_ms": {"N": str(until_ms)},
                "by": {"S": by},
                "expires_at": {"N": str(until_ms // 1000 + 3600)},
            },
        )

    def suppressed_until(self, key: str, now_ms: int) -> tuple[int, str] | None:
        item = self.client.get_item(
            TableName=self.cooldown_table, Key={COOLDOWN.key: {"S": key}}, ConsistentRead=True
        ).get("Item")
        if item is None or int(item["until_ms"]["N"]) <= now_ms:
            return None
        return int(item["until_ms"]["N"]), item["by"]["S"]

    def write_audit(self, record: dict[str, Any]) -> None:
        from boto3.dynamodb.types import TypeSerializer

        serializer = TypeSerializer()
        # DynamoDB numbers are Decimals; a JSON round trip also turns datetimes into text.
        plain = json.loads(json.dumps(record, default=str), parse_float=Decimal)
        item = {name: serializer.serialize(value) for name, value in plain.items() if value is not None}
        self.client.put_item(TableName=self.audit_table, Item=item)

    def read_audit(self, event_id: str) -> dict[str, Any] | None:
        from boto3.dynamodb.types import TypeDeserializer

        item = self.client.get_item(
            TableName=self.audit_table, Key={AUDIT.key: {"S": event_id}}, ConsistentRead=True
        ).get("Item")
        if item is None:
            return None
        deserializer = TypeDeserializer()
        return {name: deserializer.deserialize(value) for name, value in item.items()}


class SnsSender:
    """SMS through SNS (a topic's SMS subscribers, or one number), e-mail through SES."""

    def __init__(self, client: Any, ses: Any = None, mail_from: str | None = None) -> None:
        self.client = client
        self.ses = ses
        self.mail_from = mail_from
        self.sends_email = bool(ses is not None and mail_from)

    def send(self, message: Message, recipients: Sequence[str], skip: Collection[str] = ()) -> dict[str, str]:
        # Transactional: delivered ahead of promotional traffic, and to numbers on DND lists.
        attributes = {"AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"}}
        sent: dict[str, str] = {}
        for recipient in recipients:
            if recipient in skip:
                continue
            try:
                if is_email(recipient):
                    if not self.sends_email:
                        continue  # no sender configured: e-mail is an extra channel, SMS is the alert
                    response = self.ses.send_raw_email(
                        Source=self.mail_from,
                        Destinations=[recipient],
                        RawMessage={"Data": message.email(self.mail_from, recipient)},
                    )
                elif recipient.startswith("arn:"):
                    response = self.client.publish(
                        TopicArn=recipient, Message=message.sms, MessageAttributes=attributes
                    )
                else:
                    response = self.client.publish(
                        PhoneNumber=recipient, Message=message.sms, MessageAttributes=attributes
                    )
            except Exception as error:
                if sent:
                    raise PartialSend(sent) from error
                raise
            sent[recipient] = response["MessageId"]
        return sent


# --- one machine ----------------------------------------------------------------------

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS idempotency (
    {IDEMPOTENCY.key} TEXT PRIMARY KEY, status TEXT NOT NULL, {IDEMPOTENCY.ttl_attribute} INTEGER,
    in_progress_expiration INTEGER, data TEXT, validation TEXT);
CREATE TABLE IF NOT EXISTS cooldown (
    {COOLDOWN.key} TEXT PRIMARY KEY, last_sent_ms INTEGER NOT NULL, last_event_id TEXT NOT NULL,
    {COOLDOWN.ttl_attribute} INTEGER);
CREATE TABLE IF NOT EXISTS audit ({AUDIT.key} TEXT PRIMARY KEY, record TEXT NOT NULL, {AUDIT.ttl_attribute} INTEGER);
CREATE TABLE IF NOT EXISTS budget (key TEXT PRIMARY KEY, uses INTEGER NOT NULL, expires_at INTEGER);
CREATE TABLE IF NOT EXISTS suppression (key TEXT PRIMARY KEY, until_ms INTEGER NOT NULL, by TEXT NOT NULL);
"""


class SqliteTables:
    """The three tables in one SQLite file (WAL; safe across threads and processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self.connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        # One connection per thread (sqlite3 connections must not be shared across
        # threads), kept open: closing the last one checkpoints the WAL, 10 ms each time.
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA synchronous=FULL")  # an answered decision survives power loss
            self._local.db = db
        yield db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken at once (``BEGIN IMMEDIATE``: read and write without another
        writer in between), committed on leaving, rolled back if anything is raised."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")


class SqliteDecisionStore:
    def __init__(self, tables: SqliteTables) -> None:
        self.tables = tables

    def claim_cooldown(self, key: str, event_id: str, now_ms: int, cooldown_ms: int, expires_at: int) -> CooldownClaim:
        with self.tables.transaction() as db:  # read the holder and claim in one write transaction
            row = db.execute(
                f"SELECT last_event_id, last_sent_ms FROM cooldown WHERE {COOLDOWN.key} = ?", (key,)
            ).fetchone()
            changed = db.execute(
                f"""INSERT INTO cooldown ({COOLDOWN.key}, last_sent_ms, last_event_id, expires_at)
                    VALUES (:key, :now, :event, :expires)
                    ON CONFLICT ({COOLDOWN.key}) DO UPDATE SET
                        last_sent_ms = :now, last_event_id = :event, expires_at = :expires
                    WHERE cooldown.last_sent_ms < :cutoff OR cooldown.last_event_id = :event""",
                {
                    "key": key,
                    "now": now_ms,
                    "event": event_id,
                    "expires": expires_at,
                    "cutoff": now_ms - cooldown_ms,
                },
            ).rowcount
        if changed:
            return CooldownClaim(True, retaken=row is not None and row[0] == event_id)
        return CooldownClaim(False, row[0] if row else None, row[1] if row else None)

    def release_cooldown(self, key: str, event_id: str) -> None:
        with self.tables.connect() as db:
            db.execute(f"DELETE FROM cooldown WHERE {COOLDOWN.key} = ? AND last_event_id = ?", (key, event_id))

    def take_budget(self, key: str, limit: int, expires_at: int) -> bool:
        with self.tables.connect() as db:
            changed = db.execute(
                """INSERT INTO budget (key, uses, expires_at) VALUES (?, 1, ?)
                   ON CONFLICT (key) DO UPDATE SET uses = uses + 1 WHERE budget.uses < ?""",
                (key, expires_at, limit),
            ).rowcount
        return bool(changed)

    def suppress(self, key: str, until_ms: int, by: str) -> None:
        with self.tables.connect() as db:
            db.execute("INSERT OR REPLACE INTO suppression (key, until_ms, by) VALUES (?, ?, ?)", (key, until_ms, by))

    def suppressed_until(self, key: str, now_ms: int) -> tuple[int, str] | None:
        with self.tables.connect() as db:
            row = db.execute("SELECT until_ms, by FROM suppression WHERE key = ?", (key,)).fetchone()
        return (row[0], row[1]) if row and row[0] > now_ms else None

    def write_audit(self, record: dict[str, Any]) -> None:
        with self.tables.connect() as db:
            db.execute(
                f"INSERT OR REPLACE INTO audit ({AUDIT.key}, record, expires_at) VALUES (?, ?, ?)",
                (record[AUDIT.key], json.dumps(record, default=str), record.get(AUDIT.ttl_attribute)),
            )

    def read_audit(self, event_id: str) -> dict[str, Any] | None:
        with self.tables.connect() as db:
            row = db.execute(f"SELECT record FROM audit WHERE {AUDIT.key} = ?", (event_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def audit_records(self) -> list[dict[str, Any]]:
        with self.tables.connect() as db:
            return [json.loads(row[0]) for row in db.execute("SELECT record FROM audit ORDER BY rowid")]


class SqlitePersistenceLayer(BasePersistenceLayer):
    """Powertools idempotency records in SQLite, with the DynamoDB layer's put condition."""

    def __init__(self, tables: SqliteTables) -> None:
        super().__init__()
        self.tables = tables

    def _record(self, row: tuple) -> DataRecord:
        key, status, expiration, in_progress_expiration, data, validation = row
        return DataRecord(
            idempotency_key=key,
            status=status,
            expiry_timestamp=expiration,
            in_progress_expiry_timestamp=in_progress_expiration,
            response_data=data or "",
            payload_hash=validation or "",
        )

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self.tables.connect() as db:
            row = db.execute("SELECT * FROM idempotency WHERE id = ?", (idempotency_key,)).fetchone()
        if row is None:
            raise IdempotencyItemNotFoundError
        return self._record(row)

    def _put_record(self, data_record: DataRecord) -> None:
        now = dt.datetime.now()
        values = {
            "id": data_record.idempotency_key,
            "status": data_record.status,
            "expiration": data_record.expiry_timestamp,
            "in_progress": data_record.in_progress_expiry_timestamp,
            "validation": data_record.payload_hash if self.payload_validation_enabled else None,
            "now": int(now.timestamp()),
            "now_ms": int(now.timestamp() * 1000),
        }
        with self.tables.connect() as db:
            changed = db.execute(
                """INSERT INTO idempotency (id, status, expiration, in_progress_expiration, data, validation)
                   VALUES (:id, :status, :expiration, :in_progress, NULL, :validation)
                   ON CONFLICT (id) DO UPDATE SET status = :status, expiration = :expiration,
                       in_progress_expiration = :in_progress, data = NULL, validation = :validation
                   WHERE idempotency.expiration < :now
                      OR (idempotency.status = 'INPROGRESS' AND idempotency.in_progress_expiration IS NOT NULL
                          AND idempotency.in_progress_expiration < :now_ms)""",
                values,
            ).rowcount
            if changed:
                return
            row = db.execute("SELECT * FROM idempotency WHERE id = ?", (data_record.idempotency_key,)).fetchone()
        if row is None:
            raise IdempotencyItemAlreadyExistsError()
        old = self._record(row)
        self._validate_payload(data_payload=data_record, stored_data_record=old)
        raise IdempotencyItemAlreadyExistsError(old_data_record=old)

    def _update_record(self, data_record: DataRecord) -> None:
        with self.tables.connect() as db:
            db.execute(
                "UPDATE idempotency SET data = ?, expiration = ?, status = ?, validation = COALESCE(?, validation)"
                " WHERE id = ?",
                (
                    data_record.response_data,
                    data_record.expiry_timestamp,
                    data_record.status,
                    data_record.payload_hash if self.payload_validation_enabled else None,
                    data_record.idempotency_key,
                ),
            )

    def _delete_record(self, data_record: DataRecord) -> None:
        with self.tables.connect() as db:
            db.execute("DELETE FROM idempotency WHERE id = ?", (data_record.idempotency_key,))


class FileSmsSink:
    """SMS appended as JSON lines to a file, e-mail as .eml files: the embedded default."""

    sends_email = True

    def __init__(self, path: Path, mail_dir: Path | None = None, mail_from: str = "alerts@localhost") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.mail_dir = Path(mail_dir) if mail_dir else self.path.parent / "mail"
        self.mail_from = mail_from

    def send(self, message: Message, recipients: Sequence[str], skip: Collection[str] = ()) -> dict[str, str]:
        sent_at = dt.datetime.now(dt.UTC).isoformat()
        sent: dict[str, str] = {}
        lines = []
        for recipient in recipients:
            if recipient in skip:
                continue
            message_id = str(uuid.uuid4())
            if is_email(recipient):
                self.mail_dir.mkdir(parents=True, exist_ok=True)
                (self.mail_dir / f"{message_id}.eml").write_bytes(message.email(self.mail_from, recipient))
            else:
                lines.append(
                    {"message_id": message_id, "phone_number": recipient, "message": message.sms, "sent_at": sent_at}
                )
            sent[recipient] = message_id
        data = "".join(json.dumps(line) + "\n" for line in lines).encode()
        if data:
            try:
                with open(self.path, "ab") as sink:
                    fcntl.flock(sink, fcntl.LOCK_EX)  # whole lines, even with several writers
                    sink.write(data)
                    sink.flush()
                    os.fsync(sink.fileno())
            except OSError as error:
                mailed = {r: m for r, m in sent.items() if is_email(r)}
                if mailed:  # the e-mails are out: a retry must not send them again
                    raise PartialSend(mailed) from error
                raise
        return sent


def read_sms_sink(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
