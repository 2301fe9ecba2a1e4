"""The health message contract (schema 2, still reading schema 1) and the current-rate counter."""

from __future__ import annotations

import json

import pytest

from edge_app.health import RecentRate
from edge_app.match_event import CameraHealth, HealthReport, StorageHealth

# What a device before schema 2 sent (edge_app.match_event at that version).
OLD_DEVICE_MESSAGE = {
    "schema": "mpd.health/1",
    "device_id": "site-017-gate",
    "sent_at": "2026-11-29T03:00:00Z",
    "gallery_version": "20261129T020000Z",
    "fps": 14.2,
    "outbox_depth": 0,
    "cameras": ["gate"],
    "detail": {"frames": 51000, "events": 1, "dropped": 12},
}


def test_an_old_device_message_still_parses_with_empty_new_fields():
    report = HealthReport.from_json(json.dumps(OLD_DEVICE_MESSAGE))
    assert report.schema_ == "mpd.health/1" and report.cameras == ["gate"] and report.fps == 14.2
    assert report.camera_health == {} and report.storage is None and report.fps_window_s is None


def test_a_new_message_round_trips_with_camera_states_and_storage():
    report = HealthReport(
        device_id="site-017-gate",
        fps=9.8,
        fps_window_s=10.0,
        outbox_depth=2,
        cameras=["door", "gate"],
        camera_health={
            "door": CameraHealth(state="down", since="2026-11-29T02:59:00Z", error="stream unreachable"),
            "gate": CameraHealth(state="up", since="2026-11-29T01:00:00+00:00", fps=9.8, dropped=1),
        },
        interval_s=60.0,
        storage=StorageHealth(state="full", free_bytes=0, reserve_bytes=8 << 20, events_in_memory=2),
    )
    wire = report.to_json()
    assert json.loads(wire)["schema"] == "mpd.health/2"
    parsed = HealthReport.from_json(wire.encode())
    assert parsed == report
    assert {camera_id: c.state for camera_id, c in parsed.camera_health.items()} == {"door": "down", "gate": "up"}
    assert parsed.storage.events_in_memory == 2


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\xff not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({**OLD_DEVICE_MESSAGE, "schema": "mpd.health/9"}).encode(), "unknown schema"),
        (json.dumps({**OLD_DEVICE_MESSAGE, "fps": -1}).encode(), "fps"),
        (json.dumps({**OLD_DEVICE_MESSAGE, "sent_at": "2026-11-29T03:00:00"}).encode(), "UTC offset"),
        (
            json.dumps(
                {**OLD_DEVICE_MESSAGE, "camera_health": [{"id": "x", "state": "?", "since": "2026-11-29T03:00:00Z"}]}
            ),
            "state",
        ),  # fmt: skip
        (b"{" + b" " * 70_000 + b"}", "more than"),
    ],
)
def test_a_malformed_health_message_is_refused_naming_what_is_wrong(payload, expected):
    with pytest.raises(ValueError, match=expected):
        HealthReport.from_json(payload)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_current_not_a_lifetime_average():
    clock = FakeClock()
    rate = RecentRate(window_s=10.0, clock=clock)
    for _ in range(100):  # 10 fps for 10 s
        rate.add()
        clock.now += 0.1
    assert rate.rate() == pytest.approx(10.0, rel=0.12)
    clock.now += 30.0  # the camera stopped 30 s ago: a lifetime average would still say 2.5
    assert rate.rate() == 0.0 and rate.count() == 0
    for _ in range(20):  # back at 4 fps for 5 s
        rate.add()
        clock.now += 0.25
    assert rate.rate() == pytest.approx(20 / 10.0, rel=0.12)
