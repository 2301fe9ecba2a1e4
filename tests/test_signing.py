"""Ed25519 gallery signing: key generation, key loading, and what a device accepts."""

from __future__ import annotations

import base64
import stat

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_app.gallery.bundle import BundleError, load_bundle, write_bundle
from edge_app.gallery.install import load_public_key
from edge_app.gallery.sync_agent import device_embedder
from mpd_cli import main
from sync_service.gallery.signing import KEY_ENV, KEY_FILE_ENV, SigningKeyError, load_private_key, signer
from tests.gallery_factory import DETECTOR, synthetic_gallery


def write_signed(directory, key):
    gallery = synthetic_gallery(20)
    write_bundle(
        directory,
        manifest_fields={"gallery_version": "v1", "detector": DETECTOR, "embedder": device_embedder()},
        vectors=gallery.vectors,
        labels=gallery.labels,
        persons=gallery.persons,
        sign=signer(key),
    )
    return gallery


def test_keys_generate_writes_a_private_key_only_its_owner_can_read(tmp_path, monkeypatch):
    private, public = tmp_path / "k" / "gallery.key", tmp_path / "k" / "gallery.pub"
    args = ["keys", "generate", "--private", str(private), "--public", str(public)]

    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    monkeypatch.setenv(KEY_FILE_ENV, str(private))
    key = load_private_key()
    assert load_public_key(public).public_bytes_raw() == key.public_key().public_bytes_raw()
    # A second run must not destroy the key devices trust.
    again = CliRunner().invoke(main, args)
    assert again.exit_code != 0 and "refusing to overwrite" in again.output
    assert load_private_key(private).private_bytes_raw() == key.private_bytes_raw()


def test_keys_generate_force_replaces_an_old_world_readable_key_with_a_new_0600_file(tmp_path):
    private, public = tmp_path / "gallery.key", tmp_path / "gallery.pub"
    private.write_text("old key, once readable by all")
    private.chmod(0o644)
    public.write_text("old public key")

    result = CliRunner().invoke(
        main, ["keys", "generate", "--private", str(private), "--public", str(public), "--force"]
    )

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert load_private_key(private).public_key().public_bytes_raw() == load_public_key(public).public_bytes_raw()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gallery.key", "gallery.pub"]  # no temporary left


@pytest.mark.parametrize("force", [False, True])
def test_keys_generate_never_writes_through_a_symlink(tmp_path, force):
    private, public = tmp_path / "gallery.key", tmp_path / "gallery.pub"
    elsewhere = tmp_path / "shared" / "readable-by-all.pem"  # where a planted link points
    elsewhere.parent.mkdir()
    private.symlink_to(elsewhere)  # dangling
    args = ["keys", "generate", "--private", str(private), "--public", str(public)] + (["--force"] if force else [])

    result = CliRunner().invoke(main, args)

    assert not elsewhere.exists()
    if not force:
        assert result.exit_code != 0 and "refusing to overwrite" in result.output
        assert private.is_symlink()
        return
    assert result.exit_code == 0, result.output
    assert not private.is_symlink() and stat.S_IMODE(private.lstat().st_mode) == 0o600
    load_private_key(private)


def test_keys_generate_force_leaves_the_target_of_a_symlink_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file")
    victim.chmod(0o644)
    private = tmp_path / "gallery.key"
    private.symlink_to(victim)

    result = CliRunner().invoke(main, ["keys", "generate", "--private", str(private),
                                       "--public", str(tmp_path / "gallery.pub"), "--force"])  # fmt: skip

    assert result.exit_code == 0, result.output
    assert victim.read_text() == "someone else's file" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert not private.is_symlink() and stat.S_IMODE(private.stat().st_mode) == 0o600


def test_private_key_from_environment_text(monkeypatch):
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(KEY_ENV, pem.decode())
    assert load_private_key().private_bytes_raw() == key.private_bytes_raw()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key", "not an unencrypted PEM private key"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            "an Ed25519 key is required",
        ),
    ],
)
def test_bad_private_keys_are_named(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError, match=message):
        load_private_key(path)


def test_no_key_configured_says_how_to_fix_it(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(KEY_FILE_ENV, raising=False)
    with pytest.raises(SigningKeyError, match="mpd keys generate"):
        load_private_key()


def test_device_accepts_only_the_right_key_and_untouched_manifest(tmp_path):
    key = Ed25519PrivateKey.generate()
    write_signed(tmp_path / "b", key)

    assert load_bundle(tmp_path / "b", key.public_key(), require_signature=True).manifest.gallery_version == "v1"
    with pytest.raises(BundleError, match="bad signature"):
        load_bundle(tmp_path / "b", Ed25519PrivateKey.generate().public_key(), require_signature=True)

    manifest = tmp_path / "b" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"gallery_version": "v1"', '"gallery_version": "v9"'))
    with pytest.raises(BundleError, match="bad signature"):
        load_bundle(tmp_path / "b", key.public_key(), require_signature=True)


def test_unsigned_or_garbled_signature_is_refused(tmp_path):
    key = Ed25519PrivateKey.generate()
    write_signed(tmp_path / "b", key)
    signature = tmp_path / "b" / "manifest.sig"
    signature.write_bytes(b"!!not base64!!")
    with pytest.raises(BundleError, match="bad signature"):
        load_bundle(tmp_path / "b", key.public_key(), require_signature=True)
    signature.unlink()
    with pytest.raises(BundleError, match="unsigned bundle"):
        load_bundle(tmp_path / "b", key.public_key(), require_signature=True)


def test_private_key_is_never_in_the_bundle(tmp_path):
    key = Ed25519PrivateKey.generate()
    write_signed(tmp_path / "b", key)
    raw = key.private_bytes_raw()
    for path in (tmp_path / "b").iterdir():
        data = path.read_bytes()
        assert raw not in data and base64.b64encode(raw) not in data and b"PRIVATE KEY" not in data


def test_device_refuses_a_private_key_or_another_algorithm_as_its_public_key(tmp_path):
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "private.pem").write_bytes(pem)
    with pytest.raises(BundleError, match="not a PEM public key"):
        load_public_key(tmp_path / "private.pem")
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = ec_public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(BundleError, match="Ed25519 public key is required"):
        load_public_key(pem)
