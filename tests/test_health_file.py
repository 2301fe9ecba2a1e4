"""Each health report is also written to ``health_file``, whether or not the uplink takes it:
the Greengrass health gate judges a new release by it (docs/greengrass.md)."""

from __future__ import annotations

import json

from edge_app.health import HealthReporter
from edge_app.match_event import HealthReport
from edge_app.publishers import PublishError


class DownLink:
    name = "down"

    def publish(self, topic: str, payload: str, key: str) -> None:
        raise PublishError("link down")

    def close(self) -> None:
        pass


def test_health_report_is_written_to_the_file_even_when_the_uplink_is_down(tmp_path):
    frames = iter([0, 12])

    def report() -> HealthReport:
        return HealthReport(device_id="cam-site-1", detail={"frames": next(frames)})

    target = tmp_path / "state" / "health.json"
    reporter = HealthReporter("cam-site-1", DownLink(), report, 60, file=target)
    assert reporter.publish_now() is False and reporter.failed == 1
    assert json.loads(target.read_text())["detail"]["frames"] == 0
    reporter.publish_now()
    assert json.loads(target.read_text())["detail"]["frames"] == 12  # replaced, not appended
    assert [p.name for p in target.parent.iterdir()] == ["health.json"]  # no temporary left behind


def test_health_file_comes_from_the_environment(monkeypatch, tmp_path):
    from edge_app.config import load_config

    monkeypatch.setenv("MPD_HEALTH_FILE", str(tmp_path / "health.json"))
    assert load_config(None).health_file == tmp_path / "health.json"
