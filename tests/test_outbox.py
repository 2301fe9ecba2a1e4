"""The durable outbox: order, bounds, kill -9, and the sender's retry behaviour."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from edge_app.outbox import Outbox, OutboxError, OutboxSender
from edge_app.publishers import PublishError
from edge_app.publishers.local import FilePublisher


def _event(n: int) -> tuple[str, str, str]:
    event_id = str(uuid.uuid4())
    return event_id, "mpd/dev/match", json.dumps({"event_id": event_id, "n": n})


def test_events_come_out_oldest_first_and_leave_once_marked_sent(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    events = [_event(n) for n in range(5)]
    for event in events:
        assert outbox.put(*event)
    assert not outbox.put(*events[0]), "the same event id is stored once"
    assert [item.event_id for item in outbox.pending()] == [e[0] for e in events]
    outbox.mark_sent(events[0][0])
    outbox.mark_sent(events[2][0])
    assert [item.event_id for item in outbox.pending()] == [events[1][0], events[3][0], events[4][0]]
    assert outbox.depth() == 3


def test_a_full_outbox_drops_the_oldest_unsent_and_counts_it(tmp_path):
    outbox = Outbox(tmp_path / "o.db", max_events=10)
    events = [_event(n) for n in range(13)]
    for event in events:
        outbox.put(*event)
    assert outbox.depth() == 10
    assert [item.event_id for item in outbox.pending()] == [e[0] for e in events[3:]]
    assert outbox.stats()["evicted"] == 3


def test_unsent_events_survive_a_reopen(tmp_path):
    first = Outbox(tmp_path / "o.db")
    events = [_event(n) for n in range(3)]
    for event in events:
        first.put(*event)
    first.mark_sent(events[1][0])
    first.close()
    again = Outbox(tmp_path / "o.db")
    assert [item.event_id for item in again.pending()] == [events[0][0], events[2][0]]


def test_a_file_that_is_not_an_outbox_is_refused_by_name(tmp_path):
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(OutboxError, match="o.db"):
        Outbox(path)


WRITER = """
import sys, uuid, json
from edge_app.outbox import Outbox
outbox = Outbox(sys.argv[1])
while True:
    event_id = str(uuid.uuid4())
    outbox.put(event_id, "mpd/dev/match", json.dumps({"event_id": event_id}))
    print(event_id, flush=True)   # printed only after the commit returned
"""


def test_every_committed_event_survives_kill_9(tmp_path):
    path = tmp_path / "o.db"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        while len(committed) < 40:
            committed.append(process.stdout.readline().strip())
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    stored = {item.event_id for item in Outbox(path).pending(limit=100_000)}
    assert set(committed) <= stored


class FlakyPublisher:
    """Our own Publisher interface, failing the first ``fail`` calls like a down uplink."""

    name = "flaky"

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.delivered: list[str] = []

    def publish(self, topic: str, payload: str, key: str) -> None:
        self.calls.append(key)
        if len(self.calls) <= self.fail:
            raise PublishError("uplink down")
        self.delivered.append(key)

    def close(self) -> None:
        pass


def test_sender_retries_with_backoff_and_delivers_each_event_once(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    events = [_event(n) for n in range(4)]
    for event in events:
        outbox.put(*event)
    publisher = FlakyPublisher(fail=3)
    sender = OutboxSender(outbox, publisher, backoff_initial_s=0.05, backoff_max_s=0.2)
    started = time.monotonic()
    sender.start()
    assert sender.drain(timeout=10)
    sender.stop()
    assert publisher.delivered == [e[0] for e in events]
    assert publisher.calls[:4] == [events[0][0]] * 4, "the oldest event is retried until it goes"
    assert sender.failures == 3
    # Full jitter waits are random in [0, window]; three windows of 0.05, 0.1, 0.2 s at most.
    assert time.monotonic() - started < 5


def test_sender_sends_events_put_while_it_runs(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    sink = tmp_path / "events.jsonl"
    sender = OutboxSender(outbox, FilePublisher(sink))
    sender.start()
    ids = []
    for n in range(20):
        event = _event(n)
        ids.append(event[0])
        threading.Thread(target=outbox.put, args=event).start()
        time.sleep(0.005)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not sink.exists() or len(sink.read_text().splitlines()) < 20):
        time.sleep(0.05)
    sender.stop()
    received = [json.loads(line)["message"]["event_id"] for line in sink.read_text().splitlines()]
    assert sorted(received) == sorted(ids)
    assert outbox.depth() == 0
