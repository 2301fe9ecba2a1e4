"""Configuration: file, environment, Greengrass strings, live updates; errors name key and value."""

from __future__ import annotations

import pytest

from edge_app.config import ConfigError, apply_update, load_config


def test_file_then_component_then_environment(tmp_path, monkeypatch):
    path = tmp_path / "edge.yaml"
    path.write_text("device_id: site-7\nrecognition:\n  confirm_frames: 2\n  cooldown_s: 60\n")
    monkeypatch.setenv("MPD_RECOGNITION__COOLDOWN_S", "120")
    config = load_config(path, component_config={"recognition": {"confirm_frames": "4", "threshold": "0.45"}})
    assert config.device_id == "site-7"
    assert config.recognition.confirm_frames == 4  # Greengrass strings become numbers
    assert config.recognition.threshold == 0.45
    assert config.recognition.cooldown_s == 120  # environment wins


def test_greengrass_component_configuration_strings_are_converted():
    config = load_config(
        component_config={
            "cameras": [{"id": "gate", "source": "rtsp://10.0.0.5/stream"}],
            "recognition": {"send_crop": "false", "confirm_window": "8", "margin": "0.05"},
            "health_interval_s": "30",
        }
    )
    assert config.recognition.send_crop is False
    assert config.recognition.confirm_window == 8
    assert config.health_interval_s == 30.0
    assert config.cameras[0].id == "gate"


@pytest.mark.parametrize(
    ("component", "expected"),
    [
        ({"recognition": {"threshold": "1.7"}}, r"recognition\.threshold = '1\.7'"),
        ({"recognition": {"confirm_frames": "three"}}, r"recognition\.confirm_frames = 'three'"),
        ({"recognition": {"confirm_frames": 9, "confirm_window": 5}}, r"confirm_frames \(9\) is larger"),
        ({"recognition": {"treshold": 0.5}}, r"recognition\.treshold: unknown key"),
        ({"publisher": "carrier-pigeon"}, r"publisher = 'carrier-pigeon'"),
        ({"publisher": "mqtt"}, r"publisher 'mqtt' needs mqtt\.host, mqtt\.ca, mqtt\.cert, mqtt\.key"),
        ({"cameras": [{"id": "a b", "source": "0"}]}, r"cameras\.0\.id = 'a b'"),
        ({"cameras": [{"id": "a", "source": "0"}, {"id": "a", "source": "1"}]}, r"duplicate camera id"),
    ],
)
def test_bad_configuration_is_refused_naming_key_and_value(component, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(component_config=component)


def test_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("MPD_OUTBOX__MAX_EVENTS", "lots")
    with pytest.raises(ConfigError, match=r"outbox\.max_events = 'lots'"):
        load_config()


def test_bad_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        load_config(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_mqtt_certificate_paths_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"mqtt\.ca = '.*nope\.crt': file not found"):
        load_config(
            component_config={
                "publisher": "mqtt",
                "mqtt": {"host": "h", "ca": str(tmp_path / "nope.crt"), "cert": "x", "key": "y"},
            }
        )


def test_live_update_changes_thresholds_cooldown_and_cameras_only(monkeypatch):
    monkeypatch.setenv("MPD_RECOGNITION__CONFIRM_FRAMES", "4")
    current = load_config(component_config={"cameras": [{"id": "a", "source": "0"}]})
    updated = apply_update(
        current,
        {"recognition": {"threshold": "0.5", "cooldown_s": "30"}, "cameras": [{"id": "b", "source": "1"}]},
    )
    assert updated.recognition.threshold == 0.5
    assert updated.recognition.cooldown_s == 30
    assert updated.recognition.confirm_frames == 4, "untouched keys keep their value"
    assert [c.id for c in updated.cameras] == ["b"]
    assert current.recognition.threshold is None, "the running configuration is not mutated"
    # The update is exactly current + update: the environment is not read again.
    assert apply_update(current, {"recognition": {"confirm_frames": 2}}).recognition.confirm_frames == 2
    with pytest.raises(ConfigError, match="device_id, which need a restart"):
        apply_update(current, {"device_id": "other"})
    with pytest.raises(ConfigError, match=r"recognition\.threshold = '-1'"):
        apply_update(current, {"recognition": {"threshold": "-1"}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        apply_update(current, ["threshold", 0.5])
