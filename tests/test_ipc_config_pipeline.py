"""Greengrass configuration deployments reaching a real running pipeline (real models, a
video of real faces). The nucleus socket is the fake from test_ipc_config.py (no nucleus
runs here); everything above it is real: awsiotsdk clientv2, EdgeRunner, the outbox."""

from __future__ import annotations

import json
import threading
import time

import pytest
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

from edge_app.config import load_config
from edge_app.gallery.bundle import load_bundle
from edge_app.gallery.gallery import Gallery
from edge_app.gallery.live import LiveGallery
from edge_app.ipc_config import ComponentConfiguration, attach_to_runner
from edge_app.pipeline.runner import EdgeRunner
from edge_app.publishers.local import FilePublisher
from greengrass import packaging
from tests.test_edge_fixtures import face_models
from tests.test_ipc_config import FakeNucleusConnection, _merge

pytestmark = pytest.mark.slow


def test_deployed_threshold_reaches_the_running_pipeline_and_a_bad_one_is_refused(tmp_path, bundle, member_video):
    video, _ = member_video
    defaults = packaging.render_recipe("1.0.0", "mpd-artifacts-test")["ComponentConfiguration"]["DefaultConfiguration"]
    # What a field device's configuration looks like after its first deployment.
    device = {
        "device_id": "test-thing",
        "cameras": [{"id": "door", "source": str(video)}],
        "publisher": "file",
        "file_path": str(tmp_path / "events.jsonl"),
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
    }
    nucleus = FakeNucleusConnection(_merge(defaults, device))
    ipc = GreengrassCoreIPCClientV2(client=nucleus)

    component = ComponentConfiguration(ipc)
    config = load_config(component_config=component.read())
    models = face_models()
    live = LiveGallery(Gallery.from_bundle(load_bundle(bundle)), embedder=models.embedder_ref)
    runner = EdgeRunner(config, models, live, FilePublisher(config.file_path), status=None)
    attach_to_runner(runner, component)

    # Nobody in the video reaches 0.99: with this deployed, the member must not be reported.
    assert nucleus.deploy({"recognition": {"threshold": "0.99"}}, "raise-threshold") == "SUCCEEDED"
    deadline = time.monotonic() + 10
    while runner.processor.settings.threshold != 0.99:
        assert time.monotonic() < deadline, "the deployed threshold never reached the pipeline"
        time.sleep(0.01)
    outcomes = {}

    def deploy_while_running(runner):
        outcomes["bad"] = nucleus.deploy({"recognition": {"confirm_window": "0"}}, "bad-window")
        outcomes["good"] = nucleus.deploy({"recognition": {"cooldown_s": "120"}}, "shorter-cooldown")

    thread = threading.Thread(target=deploy_while_running, args=(runner,), daemon=True)
    thread.start()
    summary = runner.run()
    thread.join(10)
    assert runner.drain_outbox(10)
    runner.close()
    component.close()

    sink = tmp_path / "events.jsonl"
    events = [json.loads(line) for line in sink.read_text().splitlines()] if sink.exists() else []
    assert [e for e in events if e["message"].get("schema") == "mpd.match/1"] == []
    assert summary["faces_embedded"] > 0, "not vacuous: the member's face was searched"
    assert outcomes == {"bad": "FAILED", "good": "SUCCEEDED"}
    statuses = [(r.deployment_id, r.status) for r in nucleus.reports]
    assert statuses == [("raise-threshold", "ACCEPTED"), ("bad-window", "REJECTED"), ("shorter-cooldown", "ACCEPTED")]
    assert "recognition.confirm_window = '0'" in nucleus.reports[1].message
    assert runner.config.recognition.threshold == 0.99
    assert runner.config.recognition.confirm_window == 5, "the refused value never reached the pipeline"
    assert runner.config.recognition.cooldown_s == 120.0
