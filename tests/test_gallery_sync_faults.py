"""Faults on the device: a power cut (kill -9) during the swap or the download, and a
full disk. Each leaves a working gallery and the next sync recovers."""

from __future__ import annotations

import errno
import json
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edge_app.gallery.install import GalleryDir
from edge_app.gallery.sync_agent import SyncAgent
from edge_app.gallery.transports import FolderSource
from tests.gallery_factory import Publisher, churn, synthetic_gallery
from tests.linkserver import LinkConditions, LinkServer

REPO = Path(__file__).resolve().parent.parent


def write_public_key(publisher: Publisher, path: Path) -> Path:
    path.write_bytes(
        publisher.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


SWAP_LOOP = textwrap.dedent(
    """
    import shutil, sys
    from pathlib import Path
    from edge_app.gallery.install import GalleryDir, load_public_key

    root, template, start = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    gallery = GalleryDir(root, load_public_key(sys.argv[4]))
    print("ready", flush=True)
    i = start
    while True:
        staged = gallery.new_staging(f"v{i:06d}")
        for path in template.iterdir():
            shutil.copyfile(path, staged / path.name)
        gallery.install(staged, f"v{i:06d}")
        i += 1
    """
)


def test_kill_during_swap_always_leaves_a_valid_gallery(tmp_path):
    """kill -9 at random moments of install/switch/prune; recovery finds a verified gallery.

    kill -9 stops the process between any two system calls; it does not drop the
    page cache the way a real power cut can (that is what the fsyncs are for)."""
    publisher = Publisher(tmp_path / "cloud")
    record, _ = publisher.release(synthetic_gallery(2000, seed=1))
    template = publisher.root / record.full
    key_file = write_public_key(publisher, tmp_path / "gallery.pub")
    root = tmp_path / "device"
    rng = random.Random(5)
    seen_versions = set()
    for round_number in range(12):
        process = subprocess.Popen(
            [sys.executable, "-c", SWAP_LOOP, str(root), str(template), str(round_number * 10_000), str(key_file)],
            cwd=REPO,
            stdout=subprocess.PIPE,
        )
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        process.send_signal(signal.SIGKILL)
        process.wait()

        gallery = GalleryDir(root, publisher.public_key)
        version = gallery.recover()
        assert version is not None, f"round {round_number}: no usable gallery after kill -9"
        contents = gallery.load()
        assert contents.manifest.gallery_version == record.gallery_version
        assert not any(gallery.staging.iterdir())
        assert len(gallery.installed_versions()) <= 3
        seen_versions.add(version)
    assert len(seen_versions) > 3, "the kills should land at different points of the loop"


def test_kill_during_download_then_resume(tmp_path):
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(200, seed=1))
    shutil.copytree(publisher.root, tmp_path / "old")
    second, _ = publisher.release(synthetic_gallery(3000, seed=2))
    pointer = json.loads((publisher.root / "latest.json").read_text())
    pointer["delta"] = None  # force the large full download
    (publisher.root / "latest.json").write_text(json.dumps(pointer))
    key_file = write_public_key(publisher, tmp_path / "gallery.pub")
    device = tmp_path / "device"
    assert SyncAgent(str(tmp_path / "old"), device, publisher.public_key).sync_once().status == "installed"

    command = [
        str(REPO / ".venv" / "bin" / "mpd"),
        "sync",
        "--dir",
        str(device),
        "--public-key",
        str(key_file),
        "--once",
    ]
    with LinkServer(publisher.root, LinkConditions(bytes_per_second=400_000)) as link:
        process = subprocess.Popen([*command, "--from", link.url], cwd=REPO)
        deadline = time.monotonic() + 60
        downloads = device / "downloads" / f"{second.gallery_version}-full"
        while time.monotonic() < deadline:
            parts = list(downloads.glob("vectors.npy.part")) if downloads.is_dir() else []
            if parts and parts[0].stat().st_size > 200_000:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert GalleryDir(device, publisher.public_key).recover() == first.gallery_version
        partial = (downloads / "vectors.npy.part").stat().st_size
        assert partial > 0
        sent_before = link.stats.body_bytes
        link.conditions.bytes_per_second = None
        finished = subprocess.run([*command, "--from", link.url], cwd=REPO, capture_output=True, text=True)
        resumed_bytes = link.stats.body_bytes - sent_before

    assert finished.returncode == 0, finished.stderr
    assert GalleryDir(device, publisher.public_key).recover() == second.gallery_version
    full_size = sum(p.stat().st_size for p in (publisher.root / second.full).iterdir())
    assert resumed_bytes <= full_size - partial + 10_000, "the second run must resume, not start over"


def test_disk_full_injected_at_the_write_layer(tmp_path, monkeypatch):
    """ENOSPC injected into the download writes (works without privileges)."""
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(300, seed=1))
    agent = SyncAgent(str(publisher.root), tmp_path / "device", publisher.public_key, attempts=2, max_wait=0.01)
    agent.sync_once()
    second, _ = publisher.release(churn(synthetic_gallery(300, seed=1), 0.05))
    real_download = FolderSource.download

    def disk_full(self, relpath, dest, size, **limits):
        with open(dest, "ab") as handle:
            handle.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(dest))

    monkeypatch.setattr(FolderSource, "download", disk_full)
    result = agent.sync_once()
    assert result.status == "failed" and "disk full" in result.detail
    assert agent.version == first.gallery_version
    assert not any(agent.dir.downloads.iterdir()), "partial files must not keep the disk full"

    monkeypatch.setattr(FolderSource, "download", real_download)
    assert agent.sync_once().version == second.gallery_version


def test_disk_full_on_a_real_small_filesystem(tmp_path, small_disk, monkeypatch):
    disk = small_disk("3m")
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(300, seed=1))  # ~0.3 MB
    device = disk / "gallery"
    agent = SyncAgent(str(publisher.root), device, publisher.public_key, attempts=2, max_wait=0.01, keep_free_bytes=0)
    agent.sync_once()
    second, _ = publisher.release(synthetic_gallery(3500, seed=2))  # ~3.6 MB: cannot fit

    result = agent.sync_once()  # refused up front by the free-space check
    assert result.status == "failed" and "not enough disk" in result.detail

    # Now let it start anyway, so the kernel itself says ENOSPC mid-download.
    monkeypatch.setattr("edge_app.gallery.sync_agent.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(1, 0, 1 << 40))  # fmt: skip
    result = agent.sync_once()
    assert result.status == "failed" and "disk full" in result.detail, result.detail
    assert agent.version == first.gallery_version
    assert GalleryDir(device, publisher.public_key).load().manifest.gallery_version == first.gallery_version
    assert not any(agent.dir.downloads.iterdir())

    subprocess.run(["mount", "-o", "remount,size=20m", str(disk)], check=True)
    monkeypatch.undo()
    assert agent.sync_once().version == second.gallery_version


def test_corrupted_installed_gallery_falls_back_to_previous_at_start(tmp_path, caplog):
    publisher = Publisher(tmp_path / "cloud")
    first, _ = publisher.release(synthetic_gallery(100, seed=1))
    agent = SyncAgent(str(publisher.root), tmp_path / "device", publisher.public_key)
    agent.sync_once()
    second, _ = publisher.release(churn(synthetic_gallery(100, seed=1), 0.1))
    agent.sync_once()
    vectors = tmp_path / "device" / "current" / "vectors.npy"
    data = bytearray(vectors.read_bytes())
    data[200] ^= 0xFF  # bit rot on the device's storage
    vectors.write_bytes(bytes(data))

    restarted = SyncAgent(str(publisher.root), tmp_path / "device", publisher.public_key)

    assert restarted.version == first.gallery_version
    assert f"installed version {second.gallery_version} is not usable" in caplog.text
    assert restarted.sync_once().version == second.gallery_version  # re-fetched and verified again
