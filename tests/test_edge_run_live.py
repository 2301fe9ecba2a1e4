"""``mpd edge run`` keeping up while it runs, on videos of real faces:

- its gallery sync agent, while new signed versions are published to a folder source (a
  real process): a good version is swapped in without losing a frame, a tampered one refused;
- on Greengrass, its component configuration over IPC: read at start, a deployment applied
  live, a bad one rejected. The nucleus socket is the fake from test_ipc_config.py (no
  nucleus runs here); the awsiotsdk client above it and everything else is real."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_app.gallery.bundle import load_bundle
from edge_app.gallery.delta import GalleryData, canonical, group_by_person
from sync_service.gallery.publish import publish
from tests.gallery_factory import Publisher
from tests.test_edge_fixtures import TEST_THRESHOLD, cached_bundle, cached_scene

pytestmark = pytest.mark.slow

MPD = [sys.executable, "-m", "mpd_cli"]
MEMBER = "barack_obama"  # the member who walks through cached_scene("member")


@pytest.fixture(scope="module")
def real_gallery(bundle) -> GalleryData:
    """The enrolled test gallery (real SFace embeddings), as the nightly builder's input."""
    return GalleryData.from_bundle(load_bundle(bundle))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, faces_dir) -> Path:
    return cached_bundle(tmp_path_factory, faces_dir)


@pytest.fixture(scope="module")
def member_video(tmp_path_factory, faces_dir) -> Path:
    return cached_scene(tmp_path_factory, faces_dir, "member")[0]


@pytest.fixture(scope="module")
def long_video(tmp_path_factory, member_video) -> Path:
    """The member scene four times over (36 s): long enough to change things during the run."""
    import cv2

    reader = cv2.VideoCapture(str(member_video))
    frames = []
    while (item := reader.read())[0]:
        frames.append(item[1])
    fps = reader.get(cv2.CAP_PROP_FPS)
    reader.release()
    out = tmp_path_factory.mktemp("long") / "member-x4.avi"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for _ in range(4):
        for frame in frames:
            writer.write(frame)
    writer.release()
    return out


def renamed(gallery: GalleryData, person_id: str, suffix: str) -> GalleryData:
    """The same gallery with one person's display name corrected (a small nightly change)."""
    rows = {p.person_id: p for p in gallery.persons}
    rows[person_id] = rows[person_id].model_copy(update={"display_name": rows[person_id].display_name + suffix})
    return canonical(group_by_person(gallery.vectors, gallery.labels), rows, gallery.vectors.shape[1])


def flip_one_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


class Messages:
    """Reads the stdout publisher's JSON lines of a running ``mpd edge run`` as they come."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.put(json.loads(line))

    def wait_for(self, condition, what: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(item)
            if condition(item.get("message", {})):
                return item["message"]
        raise AssertionError(f"no {what} within {timeout} s; last messages: {self.seen[-3:]}")

    def drain(self) -> None:
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return


def is_health(version: str):
    return lambda m: m.get("schema") == "mpd.health/2" and m["gallery_version"] == version


def is_match(version: str):
    return lambda m: m.get("schema") == "mpd.match/1" and m["gallery_version"] == version


def test_run_takes_a_new_signed_gallery_without_dropping_frames_and_refuses_a_tampered_one(
    tmp_path, real_gallery, long_video
):
    cloud = Publisher(tmp_path / "cloud")
    v1, _ = cloud.release(real_gallery)
    key = tmp_path / "gallery.pub"
    key.write_bytes(cloud.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "edge.json"
    config.write_text(
        json.dumps(
            {
                "device_id": "test-thing",
                "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
                "health_interval_s": 0.3,
                # cooldown 0: the member is reported on every pass, so events show each version.
                "recognition": {"threshold": TEST_THRESHOLD, "cooldown_s": 0},
            }
        )
    )
    device = tmp_path / "device-gallery"  # empty: the run installs v1 itself before it starts
    command = ["edge", "run", "--bundle", str(device), "--source", str(long_video), "--config", str(config)]
    command += ["--publisher", "stdout", "--public-key", str(key), "--gallery-from", str(cloud.root)]
    command += ["--gallery-interval", "1"]
    stderr_path = tmp_path / "stderr.log"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            MPD + command, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        messages = Messages(process.stdout)
        first = messages.wait_for(is_match(v1.gallery_version), f"match event on {v1.gallery_version}", 180)
        assert first["person_id"] == MEMBER

        # A good new version: the running pipeline takes it (health and events say so).
        v2, _ = cloud.release(renamed(real_gallery, MEMBER, " (corrected)"))
        messages.wait_for(is_health(v2.gallery_version), f"health on {v2.gallery_version}", 60)
        after = messages.wait_for(is_match(v2.gallery_version), f"match event on {v2.gallery_version}", 60)
        assert after["person_id"] == MEMBER
        assert after["display_name"].endswith(" (corrected)"), "the new person table is the one searched"

        # A tampered new version (one bit of one embedding, in the full bundle and the delta).
        v3, _ = cloud.release(renamed(real_gallery, MEMBER, " (tampered)"), publish_it=False)
        for bundle in [v3.full] + [ref.path for ref in v3.all_deltas()]:
            flip_one_bit(cloud.build_out / "gallery" / bundle / "vectors.npy")
        publish(str(cloud.build_out), str(cloud.root))
        deadline = time.monotonic() + 60
        while f"staying on {v2.gallery_version}" not in stderr_path.read_text():
            assert time.monotonic() < deadline, "the tampered version was never tried"
            assert process.poll() is None, "the run ended before the tampered version was tried"
            time.sleep(0.2)
        messages.wait_for(is_health(v2.gallery_version), f"health still on {v2.gallery_version}", 10)
        # The video runs to its end, so every frame read must have been processed.
        assert process.wait(timeout=300) == 0, stderr_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
    time.sleep(0.5)  # the reader thread takes the last lines
    messages.drain()

    log = stderr_path.read_text()
    assert "does not match the signed manifest" in log
    summary = messages.seen[-1]
    assert summary["schema"] == "mpd.edge-summary/1"
    assert summary["interrupted"] is False
    assert summary["frames_dropped"] == 0 and summary["frames_processed"] == summary["frames_read"] > 0
    assert summary["gallery_version"] == v2.gallery_version
    published = [m["message"] for m in messages.seen if "message" in m]
    versions = [m["gallery_version"] for m in published]
    assert v3.gallery_version not in versions, "the tampered gallery never reached the pipeline"
    # Never back: once on v2, every later message is on v2.
    assert set(versions[versions.index(v2.gallery_version) :]) == {v2.gallery_version}
    assert (device / "current").resolve().name == v2.gallery_version


def test_under_greengrass_the_run_reads_its_configuration_over_ipc_and_applies_a_deployment_live(
    tmp_path, monkeypatch, bundle, member_video, long_video
):
    import awsiot.greengrasscoreipc.clientv2 as clientv2
    from click.testing import CliRunner

    from edge_app.cli import edge_group
    from greengrass import packaging
    from tests.test_ipc_config import FakeNucleusConnection, _merge

    defaults = packaging.render_recipe("1.0.0", "mpd-artifacts-test")["ComponentConfiguration"]["DefaultConfiguration"]
    sink = tmp_path / "events.jsonl"
    # Everything but the gallery comes from the component configuration, numbers as strings.
    device = {
        "device_id": "test-thing",
        "cameras": [{"id": "door", "source": str(long_video)}],
        "publisher": "file",
        "file_path": str(sink),
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "health_interval_s": "0.3",
        "recognition": {"threshold": str(TEST_THRESHOLD), "cooldown_s": "0"},
    }
    nucleus = FakeNucleusConnection(_merge(defaults, device))
    real_client = clientv2.GreengrassCoreIPCClientV2
    monkeypatch.setattr(clientv2, "GreengrassCoreIPCClientV2", lambda: real_client(client=nucleus))
    monkeypatch.setenv("SVCUID", "test-svcuid")
    monkeypatch.setenv("AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT", str(tmp_path / "ipc.socket"))

    def sent() -> list[dict]:
        return [json.loads(line)["message"] for line in sink.read_text().splitlines()] if sink.exists() else []

    outcomes: dict = {}

    def deploy_once_the_door_camera_reported_and_sent_health() -> None:
        deadline = time.monotonic() + 180
        while not {"mpd.match/1", "mpd.health/2"} <= {m.get("schema") for m in sent()}:
            if time.monotonic() > deadline:
                return
            time.sleep(0.1)
        outcomes["bad"] = nucleus.deploy({"cameras": [{"id": "a b", "source": "0"}]}, "bad-camera")
        # The camera moves: the gate shows the 9 s scene once, and the run ends with it.
        outcomes["good"] = nucleus.deploy({"cameras": [{"id": "gate", "source": str(member_video)}]}, "move-camera")

    thread = threading.Thread(target=deploy_once_the_door_camera_reported_and_sent_health, daemon=True)
    thread.start()
    # no --source: IPC names it. The shared test bundle is unsigned.
    result = CliRunner().invoke(edge_group, ["run", "--bundle", str(bundle), "--allow-unsigned"])
    thread.join(10)

    assert result.exit_code == 0, result.output[-3000:]
    assert outcomes == {"bad": "FAILED", "good": "SUCCEEDED"}
    assert [r.status for r in nucleus.reports] == ["REJECTED", "ACCEPTED"]
    assert "cameras.0.id = 'a b'" in nucleus.reports[0].message
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["interrupted"] is False and summary["frames_dropped"] == 0
    messages = sent()
    matches = [m for m in messages if m.get("schema") == "mpd.match/1"]
    assert {m["threshold"] for m in matches} == {TEST_THRESHOLD}, "the threshold came from the component config"
    cameras = [m["camera_id"] for m in matches]
    assert "door" in cameras and "gate" in cameras, "the moved camera reported from the same run"
    first_gate = cameras.index("gate")
    assert set(cameras[:first_gate]) == {"door"} and set(cameras[first_gate:]) == {"gate"}
    health = [m["cameras"] for m in messages if m.get("schema") == "mpd.health/2"]
    assert ["door"] in health and ["gate"] in health
    assert ["a b"] not in health
    door_video_frames, gate_video_frames = 4 * 135, 135
    assert summary["frames_processed"] < door_video_frames + gate_video_frames, "the door camera stopped mid-video"
    assert nucleus.closed and nucleus.subscriptions == [], "the run closed its IPC subscriptions"


def test_an_mqtt_announcement_brings_the_new_gallery_without_waiting_for_the_poll(
    tmp_path, broker, real_gallery, long_video
):
    from sync_service.gallery.publish import announce

    backend = broker.client_settings(broker.pki.backend)
    device = broker.client_settings(broker.pki.device)
    cloud = Publisher(tmp_path / "cloud")
    v1, _ = cloud.release(real_gallery)
    key = tmp_path / "gallery.pub"
    key.write_bytes(cloud.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "edge.json"
    settings = {
        "device_id": "test-thing",
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "health_interval_s": 0.3,
        "mqtt": {k: device[k] for k in ("host", "port", "ca", "cert", "key")},
        # An hour between polls: only the announcement can bring v2 during this test.
        "gallery": {"source": str(cloud.root), "dir": str(tmp_path / "device"), "public_key": str(key),
                    "interval_s": 3600, "announcements": True},
    }  # fmt: skip
    config.write_text(json.dumps(settings))
    command = ["edge", "run", "--source", str(long_video), "--config", str(config), "--publisher", "stdout"]
    process = subprocess.Popen(
        MPD + command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        messages = Messages(process.stdout)
        messages.wait_for(is_health(v1.gallery_version), f"health on {v1.gallery_version}", 180)
        v2, _ = cloud.release(renamed(real_gallery, MEMBER, " (corrected)"), publish_it=False)
        pointer = publish(str(cloud.build_out), str(cloud.root))
        announce(pointer, backend["host"], backend["port"], backend["ca"], backend["cert"], backend["key"])
        messages.wait_for(is_health(v2.gallery_version), f"health on {v2.gallery_version}", 30)
    finally:
        process.terminate()
        process.wait(timeout=60)
