"""The alert handler against real stand-ins: moto in server mode (DynamoDB, SNS) and
the one-machine backend (SQLite + SMS file), each test on both where it applies.
Case details come from the real NamUs adapter talking to the ingest team's NamUs dev
server, which serves a made-up case in NamUs's real response shape (with faults)."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import boto3
import numpy as np
import pytest
import requests

from edge_app.gallery.bundle import ModelRef, PersonRow, write_bundle
from edge_app.match_event import MAX_EVENT_BYTES, MatchEvent
from sync_service.alerts.config import AlertSettings, Sites
from sync_service.alerts.handler import AlertService, build_service
from sync_service.alerts.local import create_aws_resources
from sync_service.alerts.rule import LocalRule
from sync_service.alerts.sms import segment_count
from sync_service.alerts.stores import read_sms_sink
from sync_service.dev_servers.fixtures import FixtureCase, write_fixture_cases
from sync_service.dev_servers.server import Faults, SourceServer
from sync_service.http import ALLOW_LOOPBACK_ENV
from tests.servers import free_port

PHONE = "+15555550123"
# These tests are about the responder SMS path, so the sites review after texting
# (tests/test_review_*.py cover review: before, the default).
SITES = Sites.model_validate(
    {
        "sites": {
            "north": {"name": "North trailhead", "review": "after"},
            "south": {"name": "South gate", "review": "after"},
        },
        "devices": {
            "dev-north": {"name": "North trailhead", "site": "north", "cameras": {"cam0": "Gate camera"}},
            "dev-south": {"name": "South gate", "site": "south"},
        },
    }
)
RULE = LocalRule.parse()
GALLERY_VERSION = "2026-11-28"
# When the events happen: recent, so they are inside the cloud's clock-skew window.
SEEN = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
SEEN_TEXT = SEEN.strftime("%Y-%m-%d %H:%M UTC")

# A made-up person, served in NamUs's real response shape by the ingest team's dev server.
MADE_UP_CASE = FixtureCase(
    990001,
    "Dana",
    "Example",
    sex="Female",
    age_now=41,
    age_when_missing=35,
    last_seen_date="2020-07-04",
    city="Springfield",
    state="Illinois",
)


class NamusDev:
    """The NamUs dev server with the behaviours the alert path must survive."""

    # "down" is served by no server at all: the tests point the handler at a closed port.
    FAULTS = {
        "ok": "",
        "slow": "slow=3",
        "error": "5xx=1000",
        "rate limited": "429=1000:30",
        "malformed": "malformed=990001",
        "missing": "gone=990001",
        "resolved": "",
        "down": "",
    }

    def __init__(self, data: Path) -> None:
        self.data = data
        self._mode = "ok"
        write_fixture_cases(data, "namus", [MADE_UP_CASE], states=["Illinois"])
        self.server = SourceServer("namus", data).start()
        self.url = self.server.url

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:  # ok | slow | error | missing | resolved
        self._mode = mode
        self.server.faults = Faults.parse(self.FAULTS[mode])
        write_fixture_cases(self.data, "namus", [replace(MADE_UP_CASE, resolved=mode == "resolved")])

    def close(self) -> None:
        self.server.stop()


@pytest.fixture(scope="module")
def namus(tmp_path_factory) -> Iterator[NamusDev]:
    server = NamusDev(tmp_path_factory.mktemp("namus"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ALLOW_LOOPBACK_ENV, "1")  # the explicit opt-in for a source on 127.0.0.1
        yield server
    server.close()


def write_gallery(root: Path, version: str = GALLERY_VERSION, rows: list[PersonRow] | None = None) -> Path:
    """A published gallery version with its person table (the only part the alert path reads)."""
    rows = rows or [
        PersonRow(person_id="namus:MP990001", display_name="Dana Example", source="namus", case_id="MP990001"),
        PersonRow(person_id="namus:MP990002", display_name="Sam Example", source="namus", case_id="MP990002"),
    ]
    write_bundle(
        root / version / "full",
        manifest_fields={
            "gallery_version": version,
            "detector": ModelRef(id="yunet", sha256="0" * 64),
            "embedder": ModelRef(id="sface_2021dec", sha256="1" * 64),
        },
        vectors=np.eye(len(rows), 4, dtype=np.float32),
        labels=[row.person_id for row in rows],
        persons=rows,
    )
    return root


@pytest.fixture(scope="module")
def gallery_root(tmp_path_factory) -> Path:
    return write_gallery(tmp_path_factory.mktemp("gallery"))


def make_event(**changes: Any) -> MatchEvent:
    now = SEEN
    fields = {
        "device_id": "dev-north",
        "camera_id": "cam0",
        "person_id": "namus:MP990001",
        "source": "namus",
        "case_id": "MP990001",
        "display_name": "Dana Example",
        "best_similarity": 0.612,
        "mean_similarity": 0.55,
        "frames_used": 7,
        "first_seen": now - timedelta(seconds=4),
        "last_seen": now,
        "gallery_version": "2026-11-28",
        "model_id": "sface_2021dec",
        "threshold": 0.42,
    }
    return MatchEvent(**(fields | changes))


def rule_event(event: MatchEvent | bytes, topic: str | None = None) -> dict:
    payload = event if isinstance(event, bytes) else event.to_json().encode()
    device = topic or f"mpd/{event.device_id if isinstance(event, MatchEvent) else 'dev-north'}/match"
    received = event.last_seen if isinstance(event, MatchEvent) else SEEN
    return RULE.event_for(device, payload, received_ms=int(received.timestamp() * 1000) + 2000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """One way of running the handler, with its SMS record."""

    name: str
    settings: AlertSettings
    sms: Callable[[], list[dict]]

    def service(self, fetch: Any = True, clock: Callable[[], float] = time.time, **changes: Any) -> AlertService:
        return build_service(self.settings.model_copy(update=changes), fetch=fetch, clock=clock)


def local_backend(tmp_path: Path, namus_url: str, gallery: Path) -> Backend:
    settings = AlertSettings(
        backend="local",
        local_dir=tmp_path,
        phone_numbers=(PHONE,),
        sites=SITES,
        source_urls={"namus": namus_url},
        case_lookup_timeout=0.5,
        gallery_url=str(gallery),
    )
    return Backend("local", settings, lambda: read_sms_sink(settings.sms_sink))


def aws_backend(moto_server, namus_url: str, gallery: Path) -> Backend:
    settings = AlertSettings(
        backend="aws",
        phone_numbers=(PHONE,),
        sites=SITES,
        source_urls={"namus": namus_url},
        case_lookup_timeout=0.5,
        gallery_url=str(gallery),
        crop_bucket="mpd-review-crops",
    )
    create_aws_resources(settings)
    return Backend("aws", settings, moto_server.sent_sms)


@pytest.fixture(params=["aws", "local"])
def backend(request, tmp_path, namus, gallery_root) -> Backend:
    namus.mode = "ok"
    if request.param == "local":
        return local_backend(tmp_path, namus.url, gallery_root)
    return aws_backend(request.getfixturevalue("aws"), namus.url, gallery_root)


@pytest.fixture()
def aws_alerts(aws, namus, gallery_root) -> Backend:
    namus.mode = "ok"
    return aws_backend(aws, namus.url, gallery_root)


# --- one event, one SMS, the right text ------------------------------------------------


def test_device_event_sends_one_sms_with_fresh_case_details(backend):
    service = backend.service()
    event = make_event()

    result = service.handle(rule_event(event))

    assert result["decision"] == "sent"
    sms = backend.sms()
    assert len(sms) == 1
    assert sms[0]["phone_number"] == PHONE
    text = sms[0]["message"]
    assert text.startswith("MISSING PERSON SEEN: Dana Example (F, 41 now, 35 when missing), NamUs MP990001.")
    assert "Last seen 2020-07-04 in Springfield, IL." in text
    assert f"Seen {SEEN_TEXT} at Gate camera, North trailhead." in text
    assert "Similarity 0.61." in text
    assert text.endswith("/MissingPersons/Case#/990001")
    assert "source not reached" not in text
    assert segment_count(text) <= 2
    assert result["message_ids"] == [sms[0]["message_id"]]


def test_site_time_zone_and_names_come_from_the_site_table_only(backend):
    sites = Sites.model_validate(
        {
            "sites": {"north": {"name": "North trailhead", "timezone": "America/Chicago", "review": "after"}},
            "devices": {"dev-north": {"name": "North trailhead", "site": "north"}},
        }
    )
    service = backend.service(sites=sites)
    service.handle(rule_event(make_event()))
    assert service.handle(rule_event(make_event(device_id="dev-unknown", camera_id="cam7")))["decision"] == (
        "review_pending"  # an unknown device is a site of its own, reviewed first by default
    )
    texts = [m["message"] for m in backend.sms()]
    local = SEEN.astimezone(ZoneInfo("America/Chicago")).strftime("%Y-%m-%d %H:%M %Z")
    # The table does not name cam0: the device's camera id is not used.
    assert f"Seen {local} at camera, North trailhead." in texts[0]
    assert len(texts) == 1


def test_audit_record_holds_decision_and_message_id_without_the_face_crop(aws_alerts):
    crop = base64.b64encode(b"\xff\xd8" + b"\x00" * 100).decode()
    event = make_event(crop_jpeg_b64=crop)
    result = aws_alerts.service().handle(rule_event(event))

    table = boto3.resource("dynamodb").Table(aws_alerts.settings.audit_table)
    item = table.get_item(Key={"event_id": str(event.event_id)})["Item"]
    assert item["decision"] == "sent"
    assert item["message_ids"] == result["message_ids"]
    assert "crop_jpeg_b64" not in item["event"] and crop not in json.dumps(item, default=str)
    assert item["event"]["case_id"] == "MP990001"
    ttl_days = (int(item["expires_at"]) - time.time()) / 86400
    assert 89 < ttl_days <= 90
    ttl = boto3.client("dynamodb").describe_time_to_live(TableName=aws_alerts.settings.audit_table)
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"


def test_topic_with_sms_subscribers_gets_one_publish(aws_alerts):
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="mpd-alerts")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sms", Endpoint=PHONE)
    # moto keeps topic deliveries to SMS subscribers out of reach in server mode; a queue
    # subscribed beside them shows what the topic delivered.
    queue = sqs.create_queue(QueueName="topic-copy")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    service = aws_alerts.service(topic_arn=topic, phone_numbers=())
    event = rule_event(make_event())

    first, again = service.handle(event), service.handle(event)

    assert first["decision"] == "sent" and again["decision"] == "duplicate"
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert len(messages) == 1
    delivered = json.loads(messages[0]["Body"])
    assert delivered["MessageId"] == first["message_ids"][0]
    assert delivered["Message"].startswith("MISSING PERSON SEEN: Dana Example (F, 41 now, 35 when missing)")


# --- duplicates --------------------------------------------------------------------------


def test_same_event_twice_sends_one_sms(backend):
    service = backend.service()
    event = rule_event(make_event())
    first = service.handle(event)
    again = backend.service().handle(event)  # a fresh container, as after a Lambda cold start
    assert first["decision"] == "sent"
    assert again["decision"] == "duplicate"
    assert len(backend.sms()) == 1


def test_same_event_from_many_threads_at_once_sends_one_sms(backend):
    event = rule_event(make_event())
    services = [backend.service() for _ in range(8)]  # separate clients, like separate Lambda containers
    barrier = threading.Barrier(len(services))
    results: list[dict] = []

    def deliver(service: AlertService) -> None:
        barrier.wait()
        results.append(service.handle(event))

    threads = [threading.Thread(target=deliver, args=(service,)) for service in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(r["decision"] for r in results) == ["duplicate"] * 7 + ["sent"]
    assert len(backend.sms()) == 1


def test_same_event_id_with_other_content_is_rejected(backend, caplog):
    service = backend.service()
    event = make_event()
    service.handle(rule_event(event))
    forged = make_event(event_id=event.event_id, case_id="MP990002", person_id="namus:MP990002")
    result = service.handle(rule_event(forged))
    assert result == {"decision": "rejected", "reason": "event_id reused with different content"}
    assert len(backend.sms()) == 1


# --- cooldown -----------------------------------------------------------------------------


def test_cooldown_per_case_and_device(backend):
    clock = Clock()
    start = clock.now
    service = backend.service(clock=clock, cooldown_seconds=900)

    def at(offset: float, **changes: Any) -> str:
        clock.now = start + offset
        return service.handle(rule_event(make_event(**changes)))["decision"]

    other_case = {"case_id": "MP990002", "person_id": "namus:MP990002"}  # unknown to the source: fallback text
    decisions = [
        at(0),
        at(60),  # same case, same device: inside the cooldown
        at(60, device_id="dev-south"),  # same case seen at another site: texts
        at(60, **other_case),  # another case at the same device: texts
        at(899),  # still inside
        at(901),  # after the cooldown
        at(902),  # a new cooldown runs from the last SMS
    ]
    assert decisions == ["sent", "cooldown", "sent", "sent", "cooldown", "sent", "cooldown"]
    assert len(backend.sms()) == 4


def test_different_events_for_one_case_at_once_send_one_sms(backend):
    """The original read the cooldown, then wrote it: two events at once both texted."""
    services = [backend.service() for _ in range(6)]
    events = [rule_event(make_event()) for _ in services]  # six different event ids
    barrier = threading.Barrier(len(services))
    results: list[dict] = []

    def deliver(service: AlertService, event: dict) -> None:
        barrier.wait()
        results.append(service.handle(event))

    threads = [threading.Thread(target=deliver, args=pair) for pair in zip(services, events, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(r["decision"] for r in results) == ["cooldown"] * 5 + ["sent"]
    assert len(backend.sms()) == 1


# --- malformed payloads -------------------------------------------------------------------


def _valid() -> dict:
    return json.loads(make_event().to_json())


def _valid_json() -> bytes:
    return make_event().to_json().encode()


def _with_raw(field: str, raw: bytes) -> bytes:
    data = _valid()
    data[field] = "PLACEHOLDER"
    return json.dumps(data).encode().replace(b'"PLACEHOLDER"', raw)


def _without(field: str) -> bytes:
    data = _valid()
    del data[field]
    return json.dumps(data).encode()


def _with(**changes: Any) -> bytes:
    return json.dumps(_valid() | changes).encode()


MALFORMED: dict[str, tuple[Any, str]] = {
    "not JSON": (rule_event(b"MATCH dev-north MP990001"), "not JSON"),
    "invalid UTF-8": (rule_event(b'{"schema": "\xff\xfe"}'), "not JSON"),
    "JSON array": (rule_event(b"[1, 2, 3]"), "not a JSON object"),
    "empty payload": (rule_event(b""), "not JSON"),
    "missing field": (rule_event(_without("case_id")), "case_id: Field required"),
    "mistyped field": (rule_event(_with(best_similarity="very high")), "best_similarity"),
    "out of range": (rule_event(_with(frames_used=0)), "frames_used"),
    "event id not a uuid": (rule_event(_with(event_id="1234")), "event_id"),
    "naive timestamp": (rule_event(_with(last_seen="2026-11-29T09:12:00")), "UTC offset"),
    "unknown field": (rule_event(_with(face_embedding=[0.1] * 8)), "face_embedding"),
    "unknown schema version": (rule_event(_with(schema="mpd.match/2")), "unknown schema"),
    "no schema": (rule_event(_without("schema")), "unknown schema"),
    "oversized": (rule_event(_with(display_name="x" * (MAX_EVENT_BYTES + 10))), "more than"),
    "crop not a JPEG": (rule_event(_with(crop_jpeg_b64=base64.b64encode(b"GIF89a").decode())), "not a JPEG"),
    "device differs from topic": (rule_event(make_event(), topic="mpd/dev-south/match"), "does not match topic"),
    "nested too deeply": (rule_event(b"[" * 5000 + b"]" * 5000), "not JSON"),
    "NaN similarity": (
        rule_event(_valid_json().replace(b'"best_similarity":0.612', b'"best_similarity":NaN')),
        "best_similarity",
    ),
    "huge integer": (rule_event(_with_raw("frames_used", b"9" * 5000)), "integer string conversion"),
    "JSON null": (rule_event(b"null"), "not a JSON object"),
    "payload not base64": ({"payload": "%%%not base64%%%", "topic": "mpd/dev-north/match"}, "not base64"),
    "not a rule event": ({"hello": "world"}, "not a rule event"),
    "event not an object": ("just a string", "not an object"),
    "huge rule event": ({"payload": "A" * 200_000, "topic": "mpd/dev-north/match"}, "not a rule event"),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_payload_is_logged_with_its_reason_and_never_texts(kind, aws_alerts, caplog):
    event, reason = MALFORMED[kind]
    with caplog.at_level(logging.WARNING, logger="mpd-alerts"):
        result = aws_alerts.service().handle(event)
    assert result["decision"] == "rejected"
    assert reason in result["reason"]
    logged = [r for r in caplog.records if r.getMessage() == "rejected payload"]
    assert len(logged) == 1 and reason in logged[0].reason
    assert aws_alerts.sms() == []
    # Nothing of the rejected payload is stored either.
    audit = boto3.client("dynamodb").scan(TableName=aws_alerts.settings.audit_table)
    assert audit["Count"] == 0


def test_malformed_payloads_on_the_local_backend_never_text(tmp_path, namus, gallery_root):
    backend = local_backend(tmp_path, namus.url, gallery_root)
    service = backend.service()
    assert all(service.handle(event)["decision"] == "rejected" for event, _ in MALFORMED.values())
    assert backend.sms() == []


# --- the source API slow, down or changed ----------------------------------------------------


@pytest.mark.parametrize("mode", ["slow", "error", "rate limited", "malformed", "down", "missing"])
def test_source_api_trouble_still_texts_on_time_with_the_events_data(mode, backend, namus):
    namus.mode = mode
    fetch_url = namus.url if mode != "down" else f"http://127.0.0.1:{free_port()}"
    service = backend.service(source_urls={"namus": fetch_url}, case_lookup_timeout=0.5)

    started = time.perf_counter()
    result = service.handle(rule_event(make_event()))
    elapsed = time.perf_counter() - started

    assert result["decision"] == "sent" and result["details_fresh"] is False
    assert elapsed < 0.5 + 1.0  # the lookup budget plus the rest of the work, not the 3 s the source takes
    text = backend.sms()[0]["message"]
    assert text.startswith("MISSING PERSON SEEN: Dana Example, NamUs MP990001.")
    assert "(case source not reached: details from the gallery)" in text
    assert text.endswith("https://www.namus.gov/MissingPersons/Case#/990001")


def test_resolved_case_does_not_text_and_frees_the_cooldown(backend, namus):
    namus.mode = "resolved"
    service = backend.service()
    assert service.handle(rule_event(make_event()))["decision"] == "case_resolved"
    assert backend.sms() == []
    namus.mode = "ok"  # e.g. re-opened: the next event texts at once
    assert service.handle(rule_event(make_event()))["decision"] == "sent"


# --- SNS and DynamoDB failing -------------------------------------------------------------------


def test_sns_failing_raises_then_the_retry_sends_exactly_one_sms(aws_alerts, monkeypatch):
    event = rule_event(make_event())
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    failing = aws_alerts.service()
    with pytest.raises(Exception, match="Could not connect"):
        failing.handle(event)
    assert aws_alerts.sms() == []
    dynamodb = boto3.client("dynamodb")
    # Powertools removed its in-progress record and the cooldown claim was released,
    # so AWS's retry of this invocation is not mistaken for a duplicate or a repeat.
    assert dynamodb.scan(TableName=aws_alerts.settings.idempotency_table)["Count"] == 0
    claims = dynamodb.scan(TableName=aws_alerts.settings.cooldown_table)["Items"]
    assert [c for c in claims if not c["cooldown_key"]["S"].startswith("budget#")] == []

    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS")
    retried = aws_alerts.service()
    assert retried.handle(event)["decision"] == "sent"
    assert retried.handle(event)["decision"] == "duplicate"
    assert len(aws_alerts.sms()) == 1


def test_dynamodb_down_raises_and_does_not_text(aws_alerts, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    with pytest.raises(Exception, match="Could not connect|Failed to"):
        aws_alerts.service().handle(rule_event(make_event()))
    assert aws_alerts.sms() == []


def test_lambda_entry_point_reads_its_configuration_from_the_environment(aws_alerts, monkeypatch, namus, gallery_root):
    from sync_service.alerts import handler

    monkeypatch.setattr(handler, "_service", None)
    monkeypatch.setenv("MPD_GALLERY_URL", str(gallery_root))
    monkeypatch.setenv("MPD_ALERT_PHONE_NUMBERS", PHONE)
    monkeypatch.setenv("MPD_SITES", SITES.model_dump_json())
    monkeypatch.setenv("MPD_SOURCE_URLS", json.dumps({"namus": namus.url}))

    class Context:
        function_name = "mpd-alerts"
        memory_limit_in_mb = 256
        invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:mpd-alerts"
        aws_request_id = str(uuid.uuid4())

        def get_remaining_time_in_millis(self) -> int:
            return 10_000

    result = handler.lambda_handler(rule_event(make_event()), Context())
    assert result["decision"] == "sent" and result["details_fresh"] is True
    assert "Dana Example (F, 41 now" in aws_alerts.sms()[0]["message"]
    assert handler.lambda_handler({"payload": "e30=", "topic": "mpd/x/match"}, Context())["decision"] == "rejected"


class FlakyProxy:
    """Forwards to moto, but answers the requests ``fails(n)`` picks (n counts from 1)
    with a 5xx error: an AWS outage, transient or not."""

    def __init__(self, target: str, fails: Callable[[int], bool], status: int, body: bytes) -> None:
        self.fails, self.requests = fails, 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests += 1
                if proxy.fails(proxy.requests):
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                answer = requests.post(target + self.path, data=data, headers=dict(self.headers), timeout=10)
                self.send_response(answer.status_code)
                for name in ("Content-Type", "x-amzn-RequestId", "x-amz-crc32"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SNS_UNAVAILABLE = (
    b"<ErrorResponse><Error><Type>Receiver</Type><Code>ServiceUnavailable</Code>"
    b"<Message>try again</Message></Error></ErrorResponse>"
)
DYNAMODB_INTERNAL = b'{"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError", "message": "try again"}'


@pytest.mark.parametrize(
    ("service", "status", "body"), [("SNS", 503, SNS_UNAVAILABLE), ("DYNAMODB", 500, DYNAMODB_INTERNAL)]
)
def test_transient_aws_errors_are_retried_within_the_invocation(service, status, body, aws_alerts, monkeypatch):
    proxy = FlakyProxy(os.environ["AWS_ENDPOINT_URL"], lambda n: n == 1, status=status, body=body)
    try:
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", proxy.url)
        result = aws_alerts.service().handle(rule_event(make_event()))
    finally:
        proxy.close()
    assert result["decision"] == "sent"
    assert proxy.requests >= 2  # the failed request and its retry went through the proxy
    assert len(aws_alerts.sms()) == 1


# --- an invocation that dies half-way ----------------------------------------------------------


class Killed(BaseException):
    """The process dying (timeout, out of memory): no ``except Exception`` clean-up runs."""


class NoTimeLeft:
    """A Lambda context at its deadline, so the in-progress record expires at once."""

    def get_remaining_time_in_millis(self) -> int:
        return 0


def test_retry_after_dying_before_the_sms_texts_once(backend):
    event = rule_event(make_event())
    dying = backend.service()

    class DiesOnSend:
        def send(self, message: Any, recipients: Any, skip: Any = ()) -> dict[str, str]:
            raise Killed

    dying.sender = DiesOnSend()
    with pytest.raises(Killed):
        dying.handle(event, NoTimeLeft())
    assert backend.sms() == []
    time.sleep(0.01)  # past the in-progress expiry

    # Its cooldown claim is still held; the retry of the same event takes it back.
    assert backend.service().handle(event)["decision"] == "sent"
    assert len(backend.sms()) == 1


def test_retry_after_dying_once_the_sms_was_sent_does_not_text_again(backend, monkeypatch):
    event = rule_event(make_event())
    dying = backend.service()

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    # The SMS is out and audited, then the invocation dies before Powertools marks it done.
    monkeypatch.setattr(dying.persistence, "_update_record", die)
    with pytest.raises(Killed):
        dying.handle(event, NoTimeLeft())
    assert len(backend.sms()) == 1
    time.sleep(0.01)

    result = backend.service().handle(event)
    assert result["decision"] == "sent" and result.get("recovered") is True
    assert len(backend.sms()) == 1
    assert backend.service().handle(event)["decision"] == "duplicate"


def test_numbers_list_failing_part_way_resumes_without_texting_anyone_twice(aws_alerts, monkeypatch):
    second = "+15555550124"
    event = rule_event(make_event())
    proxy = FlakyProxy(os.environ["AWS_ENDPOINT_URL"], lambda n: n >= 2, status=503, body=SNS_UNAVAILABLE)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", proxy.url)  # the first number gets through, then SNS is down
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
        with pytest.raises(Exception, match="ServiceUnavailable"):
            aws_alerts.service(phone_numbers=(PHONE, second)).handle(event)
    finally:
        proxy.close()
    assert [m["phone_number"] for m in aws_alerts.sms()] == [PHONE]

    monkeypatch.delenv("AWS_ENDPOINT_URL_SNS")
    result = aws_alerts.service(phone_numbers=(PHONE, second)).handle(event)  # AWS's retry
    assert result["decision"] == "sent" and len(result["message_ids"]) == 2
    assert sorted(m["phone_number"] for m in aws_alerts.sms()) == [PHONE, second]
