"""A hostile or hopeless gallery server against the device (issue 13 rows 1 and 7), over a
real local HTTP server and real size-limited filesystems:

- a server that sends far more than the signed size (or the pointer's limit) is read only up
  to it, so it cannot fill the disk;
- ENOSPC during an HTTP download is reported as a full disk (not a broken connection) and
  the partial files are removed;
- a download never eats the space the device keeps free, so the outbox can still write;
- a server trickling bytes just fast enough to beat every per-read timeout cannot hold a
  sync past its deadline; what arrived is kept and the next sync resumes;
- ``mpd edge run`` with an installed gallery starts detecting at once while its agent is
  stuck on such a server."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np

from edge_app.gallery.sync_agent import SyncAgent
from edge_app.outbox import Outbox
from tests.gallery_factory import Publisher, churn, synthetic_gallery
from tests.linkserver import LinkConditions, LinkServer

MPD = [sys.executable, "-m", "mpd_cli"]
JUNK = 200 * 1024 * 1024  # what the hostile server would send after each file


def bundle_size(publisher: Publisher, record) -> int:
    return sum(p.stat().st_size for p in (publisher.root / record.full).iterdir())


def test_a_server_sending_more_than_the_signed_size_is_read_only_up_to_it(tmp_path, small_disk):
    disk = small_disk("8m")  # far smaller than what the server sends
    publisher = Publisher(tmp_path / "cloud")
    record, _ = publisher.release(synthetic_gallery(1000, seed=1))
    size = bundle_size(publisher, record)
    with LinkServer(publisher.root, LinkConditions(extra_body_bytes=JUNK, only_suffix=".npy")) as link:
        agent = SyncAgent(
            link.url, disk / "gallery", publisher.public_key, attempts=2, max_wait=0.01, keep_free_bytes=0
        )
        result = agent.sync_once()
        sent = link.stats.body_bytes

    # The first `size` bytes are the real file: it verifies and installs; the rest was never read.
    assert result.status == "installed", result.detail
    assert sent < size + 16 * 1024 * 1024, f"the server got {sent} bytes out; socket buffers aside, reading stopped"
    assert shutil.disk_usage(disk).used < 2 * size + 1024 * 1024


def test_an_endless_pointer_is_refused_at_its_size_limit(tmp_path):
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(100, seed=1))
    agent = SyncAgent(str(publisher.root), tmp_path / "device", publisher.public_key, keep_free_bytes=0)
    agent.sync_once()
    with LinkServer(publisher.root, LinkConditions(extra_body_bytes=JUNK, only_suffix="latest.json")) as link:
        agent.source = SyncAgent(link.url, tmp_path / "device", publisher.public_key).source
        result = agent.sync_once()
        sent = link.stats.body_bytes
    assert result.status == "failed" and "latest.json is larger than 65536 bytes" in result.detail
    assert sent < 16 * 1024 * 1024
    assert agent.version == first.gallery_version


def test_disk_full_during_an_http_download_is_a_full_disk_and_partials_are_removed(tmp_path, small_disk, monkeypatch):
    disk = small_disk("3m")
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(300, seed=1))
    with LinkServer(publisher.root) as link:
        agent = SyncAgent(
            link.url, disk / "gallery", publisher.public_key, attempts=2, max_wait=0.01, keep_free_bytes=0
        )
        agent.sync_once()
        second, _ = publisher.release(synthetic_gallery(3500, seed=2))  # ~3.6 MB: cannot fit
        monkeypatch.setattr(agent, "_check_space", lambda work, manifest: None)  # let the kernel say ENOSPC
        result = agent.sync_once()

    assert result.status == "failed" and result.detail.startswith("disk full"), result.detail
    assert "connection broken" not in result.detail
    assert not any(agent.dir.downloads.iterdir()), "partial files must not keep the disk full"
    assert agent.version == first.gallery_version


def test_a_gallery_download_leaves_the_space_the_outbox_needs(tmp_path, small_disk, monkeypatch):
    disk = small_disk("6m")
    keep_free = 2 * 1024 * 1024
    publisher = Publisher(tmp_path / "cloud")
    publisher.release(synthetic_gallery(200, seed=1))
    agent = SyncAgent(str(publisher.root), disk / "gallery", publisher.public_key, keep_free_bytes=keep_free)
    assert agent.sync_once().status == "installed"
    record, _ = publisher.release(synthetic_gallery(3500, seed=2))
    outbox = Outbox(disk / "outbox" / "o.db", reserve_bytes=0)

    refused = agent.sync_once()  # needs twice the bundle plus what is kept free: refused before any byte
    assert refused.status == "failed" and "kept free for the device" in refused.detail

    monkeypatch.setattr(agent, "_check_space", lambda work, manifest: None)  # a lying manifest, say
    stopped = agent.sync_once()
    assert stopped.status == "failed" and "kept free for the device" in stopped.detail, stopped.detail
    assert shutil.disk_usage(disk).free >= keep_free - 1024 * 1024  # checked every 1 MB written
    assert outbox.put("e1", "mpd/dev/match", json.dumps({"crop": "x" * 11_000})) and outbox.storage().state != "full"


def test_a_trickling_server_cannot_hold_a_sync_past_its_deadline(tmp_path):
    publisher = Publisher(tmp_path / "cloud")
    record, _ = publisher.release(synthetic_gallery(600, seed=3))
    # 4 KB/s in 256-byte writes: every read gets bytes long before its 30 s timeout.
    trickle = LinkConditions(bytes_per_second=4096, chunk=256, only_suffix="vectors.npy")
    with LinkServer(publisher.root, trickle) as link:
        agent = SyncAgent(link.url, tmp_path / "device", publisher.public_key, sync_deadline_s=3, keep_free_bytes=0)
        started = time.monotonic()
        result = agent.sync_once()
        took = time.monotonic() - started
        link.conditions.bytes_per_second = None
        partial = sum(p.stat().st_size for p in agent.dir.downloads.rglob("*.part"))
        resumed = agent.sync_once()

    assert result.status == "failed" and "sync deadline of 3 s reached" in result.detail, result.detail
    assert took < 3 + 5, f"the sync took {took:.1f} s"
    assert result.retry_soon, "progress was made: the agent comes back before its next interval"
    assert partial > 4096, "what arrived before the deadline is kept"
    assert resumed.status == "installed" and agent.version == record.gallery_version


def test_mpd_edge_run_starts_on_the_installed_gallery_while_the_agent_is_stuck(tmp_path):
    publisher = Publisher(tmp_path / "cloud")
    installed, _ = publisher.release(synthetic_gallery(300, seed=1))
    device = tmp_path / "device"
    assert SyncAgent(str(publisher.root), device, publisher.public_key).sync_once().status == "installed"
    publisher.release(churn(synthetic_gallery(300, seed=1), 0.5), publish_it=True)
    key = tmp_path / "gallery.pub"
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key.write_bytes(publisher.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    frames = tmp_path / "frames"
    frames.mkdir()
    for index in range(20):
        cv2.imwrite(str(frames / f"{index:03d}.png"), np.full((240, 320, 3), 40 + index, np.uint8))
    # 64 bit/s: the new version's bundle would take days; the pipeline must not wait for it.
    with LinkServer(publisher.root, LinkConditions(bytes_per_second=8, chunk=8, only_suffix=".npy")) as link:
        started = time.monotonic()
        result = subprocess.run(
            MPD + ["edge", "run", "--bundle", str(device), "--gallery-from", link.url, "--public-key", str(key)]
            + ["--source", str(frames), "--outbox", str(tmp_path / "o" / "o.db"), "--publisher", "stdout"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["frames_processed"] == 20 and summary["gallery_version"] == installed.gallery_version
    assert took < 60, f"{took:.0f} s: the run waited for the gallery download"
    assert any(path.endswith("vectors.npy") for path in link.stats.paths), "the agent was syncing meanwhile"
