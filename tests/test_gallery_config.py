"""The ``gallery`` section of the device configuration (the sync agent inside ``mpd edge run``)
and the errors ``mpd edge run`` gives when it cannot keep a gallery fresh."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from edge_app.config import ConfigError, apply_update, load_config


@pytest.fixture(scope="module")
def pem() -> str:
    key = Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def test_greengrass_strings_and_both_key_forms_are_accepted(tmp_path, pem):
    key_file = tmp_path / "gallery.pub"
    key_file.write_text(pem)
    settings = {"source": "s3://mpd-galleries/published", "interval_s": "1800", "announcements": "false"}
    from_text = load_config(component_config={"gallery": {**settings, "public_key": pem}}).gallery
    from_file = load_config(component_config={"gallery": {**settings, "public_key": str(key_file)}}).gallery
    assert (from_text.interval_s, from_text.announcements) == (1800.0, False)
    assert from_file.source == "s3://mpd-galleries/published"
    assert load_config().gallery.source == "", "no source by default: no sync"


@pytest.mark.parametrize(
    ("gallery", "expected"),
    [
        ({"source": "ftp://galleries.example.org/"}, "gallery.source = 'ftp://galleries.example.org/'"),
        ({"interval_s": "0.5"}, "gallery.interval_s = '0.5'"),
        ({"public_key": "/nowhere/gallery.pub"}, "gallery.public_key = '/nowhere/gallery.pub'"),
        ({"public_key": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n"}, "not a PEM public key"),
        ({"announcements": "true"}, "gallery.announcements needs mqtt.host, mqtt.ca, mqtt.cert, mqtt.key"),
        ({"sourse": "/data/gallery"}, "gallery.sourse: unknown key"),
    ],
)
def test_bad_gallery_settings_name_key_and_value(gallery, expected):
    with pytest.raises(ConfigError) as error:
        load_config(component_config={"gallery": gallery})
    assert expected in str(error.value)


def test_gallery_settings_change_only_with_a_restart():
    with pytest.raises(ConfigError, match="gallery, which need a restart"):
        apply_update(load_config(), {"gallery": {"source": "https://cdn.example/gallery/"}})


def mpd_edge_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mpd_cli", "edge", "run", "--source", "0", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_gallery_source_needs_the_public_key_and_a_gallery_directory(tmp_path, monkeypatch, pem):
    monkeypatch.delenv("MPD_GALLERY_PUBLIC_KEY", raising=False)
    key_file = tmp_path / "gallery.pub"
    key_file.write_text(pem)
    source = ["--gallery-from", str(tmp_path / "published")]

    no_key = mpd_edge_run("--bundle", str(tmp_path / "device"), *source)
    assert no_key.returncode != 0 and "a gallery source needs the gallery public key" in no_key.stderr

    bundle_folder = tmp_path / "bundle"
    bundle_folder.mkdir()
    (bundle_folder / "manifest.json").write_text("{}")
    wrong_dir = mpd_edge_run("--bundle", str(bundle_folder), "--public-key", str(key_file), *source)
    assert wrong_dir.returncode != 0 and "is a bundle folder" in wrong_dir.stderr

    # Nothing installed and nothing to fetch: refused before anything runs, saying why.
    nothing = mpd_edge_run("--bundle", str(tmp_path / "device"), "--public-key", str(key_file), *source)
    assert nothing.returncode != 0
    assert "gallery refused: none installed" in nothing.stderr and "latest.json does not exist" in nothing.stderr
    assert "Traceback" not in nothing.stderr + no_key.stderr + wrong_dir.stderr
