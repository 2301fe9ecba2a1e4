"""The device's disk on a bad day (issue 13 rows 2 and 11): a real full filesystem under the
outbox, and who may read the outbox.

- a full disk never raises out of ``Outbox.put`` (the frame loop would die and the event
  with it): the reserve is given back first, then events are held in memory, offered to the
  sender, and written once space returns; the error kept names the cause ("disk full"),
  not a failed rollback;
- ``mpd edge run`` with its outbox on a full disk publishes the confirmed events anyway and
  reports ``storage.state == "full"`` in health;
- the database, WAL and shm files are 0600 in a 0700 directory, whatever the umask."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

from edge_app.outbox import Outbox, OutboxSender
from edge_app.publishers.local import FilePublisher
from tests.conftest import fill_disk
from tests.test_edge_fixtures import TEST_THRESHOLD

MPD = [sys.executable, "-m", "mpd_cli"]
CROP_SIZED = "x" * 11_000  # a match event with its face crop is about this big


def event(n: int) -> tuple[str, str, str]:
    event_id = str(uuid.uuid4())
    return event_id, "mpd/dev/match", json.dumps({"event_id": event_id, "n": n, "crop": CROP_SIZED})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outbox_files_are_private_whatever_the_umask(tmp_path):
    old_umask = os.umask(0o022)
    try:
        outbox = Outbox(tmp_path / "state" / "outbox" / "o.db", reserve_bytes=0)
        outbox.put(*event(0))
        directory = tmp_path / "state" / "outbox"
        assert mode(directory) == 0o700
        for name in ("o.db", "o.db-wal", "o.db-shm"):
            assert (directory / name).exists(), name
            assert mode(directory / name) == 0o600, f"{name} is {oct(mode(directory / name))}"
        outbox.close()

        # An outbox an older version left world-readable is made private when opened.
        legacy = tmp_path / "legacy"
        legacy.mkdir(mode=0o755)
        old = Outbox(legacy / "o.db", reserve_bytes=0)
        old.put(*event(1))
        old.close()
        for name in ("o.db", "o.db-wal"):
            if (legacy / name).exists():
                os.chmod(legacy / name, 0o644)
        reopened = Outbox(legacy / "o.db", reserve_bytes=0)
        assert mode(legacy / "o.db") == 0o600 and reopened.depth() == 1
    finally:
        os.umask(old_umask)


def test_a_full_disk_keeps_events_in_memory_sends_them_and_writes_them_when_space_returns(tmp_path, small_disk):
    disk = small_disk("2m")
    outbox = Outbox(disk / "outbox" / "o.db", reserve_bytes=256 * 1024, max_in_memory=50)
    assert outbox.reserve_path.stat().st_size == 256 * 1024
    written = [event(n) for n in range(3)]
    for item in written:
        outbox.put(*item)
    filler = fill_disk(disk)
    assert outbox.storage().state in ("ok", "low")

    # The reserve is given back first: the next events still reach the disk.
    more = [event(n) for n in range(3, 8)]
    for item in more:
        assert outbox.put(*item) is True  # never raises
    assert not outbox.reserve_path.exists()
    # Then the disk is really full: events are held in memory, none lost, nothing raised.
    while outbox.storage().state != "full":
        item = event(len(more) + 3)
        more.append(item)
        assert outbox.put(*item) is True
        assert len(more) < 200, "the 2 MB disk should be full long before this"
    state = outbox.storage()
    assert state.events_in_memory >= 1 and state.events_lost == 0
    assert state.error.startswith("disk full") and "rollback" not in state.error.lower()
    assert outbox.depth() == len(written) + len(more)

    # The sender delivers everything, held events included, oldest first.
    sink = tmp_path / "sent.jsonl"
    sender = OutboxSender(outbox, FilePublisher(sink), backoff_initial_s=0.05, backoff_max_s=0.1)
    sender.start()
    try:
        assert sender.drain(20), f"still {outbox.depth()} unsent"
    finally:
        sender.stop()
    sent = [json.loads(line)["message"]["event_id"] for line in sink.read_text().splitlines()]
    assert sent == [item[0] for item in written + more]

    # Space returns: held events that were sent are not written back; new events go to disk,
    # the reserve comes back, and the condition clears.
    filler.unlink()
    late = event(999)
    outbox.put(*late)
    assert outbox.retry_held() == 0
    assert [item.event_id for item in outbox.pending()] == [late[0]]
    assert outbox.storage().state == "ok" and outbox.reserve_path.exists()


def test_events_held_while_the_disk_is_full_reach_the_disk_when_it_frees(tmp_path, small_disk):
    disk = small_disk("1m")
    outbox = Outbox(disk / "o.db", reserve_bytes=0, max_in_memory=3)
    first = event(0)
    outbox.put(*first)
    filler = fill_disk(disk)
    held = [event(n) for n in range(1, 6)]
    for item in held:
        outbox.put(*item)
    state = outbox.storage()
    assert (state.state, state.events_in_memory, state.events_lost) == ("full", 3, 2), "bounded: oldest dropped"
    filler.unlink()
    assert outbox.retry_held() == 0
    outbox.close()
    reopened = Outbox(disk / "o.db", reserve_bytes=0)  # on disk now: survives a restart
    assert [item.event_id for item in reopened.pending()] == [first[0]] + [item[0] for item in held[2:]]


def test_mpd_edge_run_with_its_outbox_on_a_full_disk_keeps_running_and_publishes(
    tmp_path, small_disk, bundle, member_video
):
    disk = small_disk("1m")
    outbox = disk / "outbox" / "o.sqlite3"
    Outbox(outbox, reserve_bytes=0).close()  # an existing outbox, then the disk fills up
    fill_disk(disk)
    config = tmp_path / "edge.json"
    config.write_text(
        json.dumps(
            {
                "device_id": "test-thing",
                "outbox": {"path": str(outbox), "reserve_mb": 0},
                "health_interval_s": 0.2,
                "recognition": {"threshold": TEST_THRESHOLD, "cooldown_s": 1},
            }
        )
    )
    result = subprocess.run(
        MPD + ["edge", "run", "--bundle", str(bundle), "--allow-unsigned"]
        + ["--source", str(member_video[0]), "--config", str(config), "--realtime", "--publisher", "stdout"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    summary = lines[-1]
    assert summary["schema"] == "mpd.edge-summary/1" and summary["events"] == 2
    matches = [m["message"] for m in lines[:-1] if m["topic"].endswith("/match")]
    assert sorted(m["event_id"] for m in matches) == sorted(summary["event_ids"]), "sent from memory"
    health = [m["message"] for m in lines[:-1] if m["topic"].endswith("/health")]
    assert any(h["storage"]["state"] == "full" for h in health)
    assert "disk full: outbox" in result.stderr and "Traceback" not in result.stderr
