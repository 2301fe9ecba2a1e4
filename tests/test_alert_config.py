"""Alert settings from the environment: defaults, and bad values named clearly."""

from __future__ import annotations

import json

import pytest

from sync_service.alerts.config import DEFAULT_COOLDOWN_SECONDS, AlertSettings


def test_backend_follows_the_environment():
    assert AlertSettings.from_env({}).backend == "local"
    assert AlertSettings.from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"}).backend == "aws"
    assert AlertSettings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "mpd-alerts"}).backend == "aws"
    assert AlertSettings.from_env({"AWS_ENDPOINT_URL": "x", "MPD_ALERT_BACKEND": "local"}).backend == "local"


def test_values_are_read_and_typed():
    settings = AlertSettings.from_env(
        {
            "MPD_ALERT_PHONE_NUMBERS": "+15555550100, +15555550101",
            "MPD_ALERT_COOLDOWN_SECONDS": "60",
            "MPD_SITES": json.dumps({"devices": {"d1": {"name": "Gate", "timezone": "Europe/Berlin"}}}),
            "MPD_SOURCE_URLS": '{"namus": "http://127.0.0.1:9"}',
        }
    )
    assert settings.phone_numbers == ("+15555550100", "+15555550101")
    assert settings.cooldown_seconds == 60
    assert settings.sites.describe("d1", "cam9") == ("camera", "Gate")  # never the device's camera id
    assert settings.source_urls == {"namus": "http://127.0.0.1:9"}
    assert AlertSettings.from_env({}).cooldown_seconds == DEFAULT_COOLDOWN_SECONDS == 900


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MPD_ALERT_PHONE_NUMBERS": "555-0100"}, "MPD_ALERT_PHONE_NUMBERS[0]"),
        ({"MPD_ALERT_COOLDOWN_SECONDS": "soon"}, "MPD_ALERT_COOLDOWN_SECONDS"),
        ({"MPD_ALERT_COOLDOWN_SECONDS": "-5"}, "MPD_ALERT_COOLDOWN_SECONDS"),
        ({"MPD_CASE_LOOKUP_TIMEOUT": "60"}, "MPD_CASE_LOOKUP_TIMEOUT"),
        ({"MPD_ALERT_BACKEND": "cloud"}, "MPD_ALERT_BACKEND"),
        ({"MPD_SITES": "{devices: }"}, "MPD_SITES is not JSON"),
        ({"MPD_SITES": '{"devices": {"d1": {"name": "Gate", "timezone": "Mars/Olympus"}}}'}, "unknown time zone"),
        ({"MPD_SITES": '{"devices": {"d1": {"nam": "Gate"}}}'}, "MPD_SITES[devices][d1]"),
        ({"MPD_SOURCE_URLS": "[1, 2]"}, "MPD_SOURCE_URLS"),
        ({"MPD_SITES_FILE": "/nonexistent/sites.json"}, "MPD_SITES_FILE"),
    ],
)
def test_bad_values_name_the_variable(env, named):
    with pytest.raises(ValueError) as error:
        AlertSettings.from_env(env)
    assert named in str(error.value)
