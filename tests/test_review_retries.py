"""Messages after a review decision are delivered, or retried until they are, and never
sent twice: SNS down (moto behind a proxy answering 503, or a deleted topic) or the local
SMS sink failing, then back, on both backends; a bounded retry that gives up loudly
(audit, page, metric); a decision whose process died before sending; two sweeps at once.

The faces are scikit-image's astronaut sample (tests/test_review_service.py), never a
real missing person."""

# ruff: noqa: F811  (pytest fixtures imported from tests/test_review_service.py are parameters here)
from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest

from sync_service.review.records import ESCALATION, FOLLOWUP, RESPONDERS, State
from tests.test_alert_handler import SNS_UNAVAILABLE, Clock, FlakyProxy, make_event, rule_event
from tests.test_review_service import (  # noqa: F401  (fixtures)
    RESPONDER,
    RESPONDER_ES,
    SECOND,
    case_store,
    gallery_root,
    world_factory,
)


@contextmanager
def sms_down(world: Any, monkeypatch: pytest.MonkeyPatch, fails=lambda n: True) -> Iterator[None]:
    """SMS cannot be sent while inside: SNS answers 503 (what ``fails`` picks: every
    request by default), or the local SMS sink cannot be written. Services built inside
    send through the outage (as a Lambda container started during it would)."""
    if world.name == "aws":
        proxy = FlakyProxy(os.environ["AWS_ENDPOINT_URL"], fails, status=503, body=SNS_UNAVAILABLE)
        monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", proxy.url)
        try:
            yield
        finally:
            monkeypatch.delenv("AWS_ENDPOINT_URL_SNS")
            proxy.close()
        return
    sink = world.settings.sms_sink
    aside = sink.with_suffix(".aside")
    if sink.exists():
        sink.rename(aside)
    sink.mkdir()  # appending to a directory fails: the sink is broken
    try:
        yield
    finally:
        shutil.rmtree(sink)
        if aside.exists():
            aside.rename(sink)


def audit_actions(service: Any, review_id: str) -> list[str]:
    return [entry["action"] for entry in service.review.reviews.audit_trail(review_id)]


def test_sms_down_at_the_confirmation_then_back_each_responder_gets_exactly_one(world_factory, monkeypatch):
    world = world_factory("before")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]

    with sms_down(world, monkeypatch):
        down = world.service(clock=clock)
        outcome = down.review.decide(review_id, "alice", confirm=True)
        assert outcome.record.state == State.CONFIRMED  # the decision stands
        assert outcome.error and outcome.sent == {}
        delivery = outcome.record.deliveries[RESPONDERS]
        assert (delivery.status, delivery.attempts, sorted(delivery.missing)) == ("due", 1, [RESPONDER, RESPONDER_ES])
        clock.now += 29
        assert down.review.sweep()["retried"] == 0  # not due before its 30 s
        clock.now += 2
        done = down.review.sweep()
        assert (done["retried"], done["awaiting_retry"], done["gave_up"]) == (1, 1, 0)
        assert down.review.reviews.get(review_id).deliveries[RESPONDERS].attempts == 2
    assert world.sms_to(RESPONDER) == [] and world.sms_to(RESPONDER_ES) == []

    up = world.service(clock=clock)  # the next sweep, after SNS came back
    clock.now += 60
    assert up.review.sweep()["retried"] == 1
    for _ in range(3):
        clock.now += 600
        assert up.review.sweep() == {"escalated": 0, "expired": 0, "retried": 0, "gave_up": 0, "awaiting_retry": 0}
    assert len(world.sms_to(RESPONDER)) == 1 and len(world.sms_to(RESPONDER_ES)) == 1
    assert world.sms_to(RESPONDER)[0].startswith("CONFIRMED BY REVIEWER: MISSING PERSON SEEN: Dana Example")
    record = up.review.reviews.get(review_id)
    assert record.deliveries[RESPONDERS].status == "delivered" and record.deliveries[RESPONDERS].attempts == 3
    assert record.retry_ms is None and record.delivery_problem == ""
    assert audit_actions(up, review_id) == ["created", "confirmed", "notify_failed", "notify_failed", "notified"]


def test_a_send_that_failed_part_way_resumes_with_only_those_not_reached(world_factory, monkeypatch):
    """SNS takes the first responder's SMS, then fails: the retry texts only the second."""
    world = world_factory("before")
    if world.name != "aws":
        pytest.skip("the local sink writes a batch at once; its partial case is the e-mail one below")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    with sms_down(world, monkeypatch, fails=lambda n: n >= 2):
        outcome = world.service(clock=clock).review.decide(review_id, "alice", confirm=True)
    assert set(outcome.sent) == {RESPONDER} and outcome.error
    assert outcome.record.deliveries[RESPONDERS].missing == [RESPONDER_ES]

    clock.now += 31
    world.service(clock=clock).review.sweep()
    assert len(world.sms_to(RESPONDER)) == 1 and len(world.sms_to(RESPONDER_ES)) == 1


def test_e_mail_sent_before_the_sms_failed_is_not_sent_again(world_factory, monkeypatch):
    # The e-mail goes out first, then the SMS fails: on the retry only the SMS may go.
    world = world_factory("before", responders=[{"email": "responder@example.org"}, {"phone": RESPONDER}])
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    with sms_down(world, monkeypatch, fails=lambda n: True):
        world.service(clock=clock).review.decide(review_id, "alice", confirm=True)
    clock.now += 31
    world.service(clock=clock).review.sweep()
    clock.now += 600
    world.service(clock=clock).review.sweep()
    to_responder = [m for m in world.mail() if m["To"] == "responder@example.org"]
    assert len(to_responder) == 1 and len(world.sms_to(RESPONDER)) == 1


def test_a_deleted_topic_fails_the_retry_until_it_is_back(world_factory):
    """A site with no responders texts MPD_ALERT_TOPIC_ARN's SMS subscribers."""
    world = world_factory("before", responders=[])
    if world.name != "aws":
        pytest.skip("SNS topics exist on the AWS backend only")
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name="mpd-alerts")["TopicArn"]
    clock = Clock()
    service = world.service(clock=clock, topic_arn=topic)
    review_id = service.handle(rule_event(make_event()))["review_id"]
    sns.delete_topic(TopicArn=topic)

    outcome = service.review.decide(review_id, "alice", confirm=True)
    assert "NotFound" in outcome.error and outcome.record.deliveries[RESPONDERS].missing == [topic]

    assert sns.create_topic(Name="mpd-alerts")["TopicArn"] == topic
    sns.subscribe(TopicArn=topic, Protocol="sms", Endpoint=RESPONDER)
    # moto keeps topic deliveries to SMS subscribers out of reach in server mode; a queue
    # subscribed beside them shows what the topic delivered.
    queue = sqs.create_queue(QueueName="topic-copy")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
    clock.now += 31
    assert service.review.sweep()["retried"] == 1
    clock.now += 600
    service.review.sweep()
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [json.loads(m["Body"])["Message"][:45] for m in messages] == [
        "CONFIRMED BY REVIEWER: MISSING PERSON SEEN: D"
    ]


def test_a_persistent_failure_is_given_up_audited_counted_and_not_sent_later(world_factory, monkeypatch):
    world = world_factory("before")
    clock = Clock()
    settings = {"notify_retry_attempts": 4}
    review_id = world.service(clock=clock, **settings).handle(rule_event(make_event()))["review_id"]
    gave_up = []
    with sms_down(world, monkeypatch):
        down = world.service(clock=clock, **settings)
        down.review.decide(review_id, "alice", confirm=True)  # attempt 1
        for _ in range(8):
            clock.now += 600
            gave_up.append(down.review.sweep()["gave_up"])
    assert gave_up == [0, 0, 1, 0, 0, 0, 0, 0]  # attempts 2, 3 fail; the 4th gives up
    record = down.review.reviews.get(review_id)
    delivery = record.deliveries[RESPONDERS]
    assert (delivery.status, delivery.attempts) == ("failed", 4)
    assert record.delivery_problem == "A notification FAILED: someone was not told."
    trail = down.review.reviews.audit_trail(review_id)
    assert trail[-1]["action"] == "notify_gave_up" and RESPONDER in trail[-1]["detail"]

    up = world.service(clock=clock, **settings)
    clock.now += 600
    assert up.review.sweep()["awaiting_retry"] == 0
    assert world.sms_to(RESPONDER) == []  # given up is given up: no SMS hours late without a person deciding


def test_retries_stop_at_the_age_bound_too(world_factory, monkeypatch):
    world = world_factory("before")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    with sms_down(world, monkeypatch):
        down = world.service(clock=clock, notify_retry_minutes=5)
        down.review.decide(review_id, "alice", confirm=True)
        clock.now += 10 * 60  # the sweep was not running for ten minutes
        assert down.review.sweep()["gave_up"] == 1
    assert down.review.reviews.get(review_id).deliveries[RESPONDERS].status == "failed"


def test_a_slow_send_is_not_taken_over_by_a_sweep_meanwhile(world_factory, monkeypatch):
    """SNS answers slowly (botocore retrying inside the attempt): a sweep that runs while
    the Confirm is still sending must leave that attempt alone, not send it a second time."""
    world = world_factory("before")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    slow = world.service(clock=clock)
    send = slow.review.sender.send
    meanwhile: list[int] = []

    def slow_send(*args: Any, **kwargs: Any) -> dict[str, str]:
        clock.now += 45  # past the first retry's 30 s
        meanwhile.append(world.service(clock=clock).review.sweep()["retried"])
        return send(*args, **kwargs)

    monkeypatch.setattr(slow.review.sender, "send", slow_send)
    outcome = slow.review.decide(review_id, "alice", confirm=True)

    assert outcome.error is None and outcome.record.deliveries[RESPONDERS].status == "delivered"
    assert meanwhile == [0, 0]  # one send per language, each with a sweep beside it
    assert len(world.sms_to(RESPONDER)) == 1 and len(world.sms_to(RESPONDER_ES)) == 1


def test_a_decision_whose_process_died_before_sending_is_delivered_by_the_sweep(world_factory):
    """The confirmation and the message it owes are one write: dying right after it loses nothing."""
    world = world_factory("before")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    dying = world.service(clock=clock)

    class Killed(BaseException):
        pass

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    dying.review.deliver = die
    with pytest.raises(Killed):
        dying.review.decide(review_id, "alice", confirm=True)
    assert world.sms_to(RESPONDER) == []

    clock.now += 1
    assert world.service(clock=clock).review.sweep()["retried"] == 1
    assert len(world.sms_to(RESPONDER)) == 1 and len(world.sms_to(RESPONDER_ES)) == 1


def test_two_sweeps_at_once_text_each_responder_once(world_factory, monkeypatch):
    """Two sweeps (two Lambda containers, or mpd cloud serve beside a Lambda) take the same
    due retry; the conditional write lets one of them send. On the local backend only: the
    shared moto server evaluates concurrent conditional writes without a lock (alerts.md)."""
    world = world_factory("before")
    if world.name != "local":
        pytest.skip("moto does not serialise concurrent conditional writes")
    clock = Clock()
    for round_ in range(4):
        clock.now += 1
        review_id = world.service(clock=clock, cooldown_seconds=0).handle(rule_event(make_event()))["review_id"]
        with sms_down(world, monkeypatch):
            world.service(clock=clock).review.decide(review_id, "alice", confirm=True)
        clock.now += 31
        barrier = threading.Barrier(2)
        results: list[int] = []

        def sweep(barrier=barrier, results=results) -> None:
            service = world.service(clock=clock)
            barrier.wait()
            results.append(service.review.sweep()["retried"])

        threads = [threading.Thread(target=sweep) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(world.sms_to(RESPONDER)) == round_ + 1, results


def test_a_failed_escalation_is_retried_and_a_decision_cancels_it(world_factory, monkeypatch):
    world = world_factory("before")
    clock = Clock()
    first = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    clock.now += 1
    second = world.service(clock=clock, cooldown_seconds=0).handle(rule_event(make_event()))["review_id"]
    clock.now += 11 * 60
    with sms_down(world, monkeypatch):
        done = world.service(clock=clock).review.sweep()
    assert done["escalated"] == 0 and done["awaiting_retry"] == 2
    up = world.service(clock=clock)
    up.review.decide(second, "alice", confirm=False)  # decided meanwhile: nobody else needs to look
    assert up.review.reviews.get(second).deliveries[ESCALATION].status == "cancelled"

    clock.now += 31
    assert up.review.sweep()["retried"] == 1
    clock.now += 600
    up.review.sweep()
    (escalation,) = world.sms_to(SECOND)
    assert escalation.startswith("REVIEW NEEDED, no decision after 10 min") and first in escalation
    assert "escalated" in audit_actions(up, first)


def test_a_follow_up_that_failed_is_retried(world_factory, monkeypatch):
    world = world_factory("after")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    with sms_down(world, monkeypatch):
        outcome = world.service(clock=clock).review.decide(review_id, "alice", confirm=False)
    assert outcome.record.deliveries[FOLLOWUP].status == "due"
    clock.now += 31
    world.service(clock=clock).review.sweep()
    messages = world.sms_to(RESPONDER)
    assert len(messages) == 2 and messages[1].startswith("DISREGARD the alert of")


def test_the_sweep_lambda_reports_the_alarms_metrics(world_factory, monkeypatch, capsys):
    from sync_service.review import lambda_app
    from tests.test_template import TEMPLATE

    world = world_factory("before")
    if world.name != "aws":
        pytest.skip("the sweep Lambda runs on the AWS backend")
    clock = Clock()
    review_id = world.service(clock=clock).handle(rule_event(make_event()))["review_id"]
    with sms_down(world, monkeypatch):
        down = world.service(clock=clock, notify_retry_attempts=2)
        down.review.decide(review_id, "alice", confirm=True)
    capsys.readouterr()
    monkeypatch.setattr(lambda_app, "_review", down.review)
    clock.now += 31

    lambda_app.sweep_handler({}, None)

    line = next(json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line)
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    assert line["NotificationsGivenUp"] == [1.0] and line["NotificationsAwaitingRetry"] == [0.0]
    from cfnlint.decode import decode

    resources = decode(str(TEMPLATE))[0]["Resources"]
    for alarm in ("ReviewNotificationsFailingAlarm", "ReviewNotificationsGivenUpAlarm"):
        properties = resources[alarm]["Properties"]
        assert properties["Namespace"] == directive["Namespace"] == lambda_app.METRICS_NAMESPACE
        assert properties["MetricName"] in {m["Name"] for m in directive["Metrics"]}
        assert {d["Name"]: d["Value"] for d in properties["Dimensions"]} == {"service": line["service"]}
