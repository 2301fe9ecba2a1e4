"""Shared fixtures: real local servers and the shared real test data."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.servers import Mosquitto, MotoServer, Pki

# The device tests' shared bundle and video fixtures.
pytest_plugins = ["tests.test_edge_fixtures"]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MPD_SHARED_DATA", REPO.parent / "shared" / "data"))
FACES = SHARED_DATA / "faces"
SOURCES = SHARED_DATA / "sources"


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    """Real face photos from ../shared/data/faces (third-party; read in place, never copied)."""
    if not (FACES / "gallery").is_dir():
        pytest.skip(f"real face photos not found at {FACES} (../shared/data/faces is absent)")
    return FACES


@pytest.fixture(scope="session")
def sources_dir() -> Path:
    """Real API responses from ../shared/data/sources."""
    if not SOURCES.is_dir():
        pytest.skip(f"real API responses not found at {SOURCES} (../shared/data/sources is absent)")
    return SOURCES


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def mosquitto(pki, tmp_path_factory):
    """A running mosquitto that requires client certificates (IoT Core stand-in)."""
    broker = Mosquitto(pki, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture()
def broker(mosquitto):
    """The session broker, guaranteed running at the start of the test (a test may stop it)."""
    mosquitto.start()
    yield mosquitto
    mosquitto.start()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def aws(moto_server, monkeypatch):
    """boto3 pointed at a freshly reset moto server."""
    moto_server.reset()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server


@pytest.fixture()
def small_disk(tmp_path):
    """A real size-limited filesystem: ``small_disk(size)`` mounts a tmpfs of ``size``
    ("3m") and returns its path; unmounted after the test. Needs root (CI and this machine
    run as root); skipped elsewhere, where the injected-ENOSPC tests still cover the logic."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        if shutil.which("mount") is None or os.geteuid() != 0:
            pytest.skip("mounting a size-limited tmpfs needs root")
        mountpoint = tmp_path / f"small-disk-{len(mounted)}"
        mountpoint.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mountpoint)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(mountpoint)
        return mountpoint

    yield mount
    for mountpoint in mounted:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill_disk(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of ``directory`` until at most ``leave`` bytes are free."""
    filler = directory / "filler"
    with open(filler, "ab") as handle:
        while shutil.disk_usage(directory).free > leave:
            try:
                handle.write(b"\0" * max(4096, min(1 << 20, shutil.disk_usage(directory).free - leave)))
                handle.flush()
            except OSError:
                break
    return filler
