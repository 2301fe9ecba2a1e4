"""Ed25519 keys for gallery bundles: ``mpd keys generate`` and the builder's signer.

The private key stays in the cloud (a file, a Secrets Manager secret read at run time,
or an environment variable); it is never written into a bundle. Devices get
only the public key and verify with ``cryptography`` directly (edge_app/gallery).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import click
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# PEM text of the private key, or a path to a PEM file (the file is usually better:
# environment variables leak into process listings and crash reports more easily).
KEY_ENV = "MPD_GALLERY_SIGNING_KEY"
KEY_FILE_ENV = "MPD_GALLERY_SIGNING_KEY_FILE"
# In AWS: the Secrets Manager secret (name or ARN) holding the PEM, read at run time, so the
# key is never in the function's configuration, template or logs.
KEY_SECRET_ENV = "MPD_GALLERY_SIGNING_KEY_SECRET"


class SigningKeyError(RuntimeError):
    """No usable Ed25519 private key was configured."""


def generate_key_pair(private_path: Path, public_path: Path, overwrite: bool = False) -> None:
    """Write a new Ed25519 key pair as PEM; the private file is always a new 0600 file.

    Nothing is ever written through a symlink or into an existing file: each key goes to
    a fresh file made with ``O_EXCL`` (0600 for the private key) that is then renamed into
    place, so ``overwrite`` replaces an old 0644 key or a (dangling) symlink by a new
    file instead of keeping its mode or following the link.
    """
    private_path, public_path = Path(private_path), Path(public_path)
    for path in (private_path, public_path):
        if os.path.lexists(path) and not overwrite:  # lexists: a dangling symlink counts as there
            raise SigningKeyError(f"{path} exists; refusing to overwrite a key (use --force)")
        if path.is_dir():
            raise SigningKeyError(f"{path} is a directory")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    public_path.parent.mkdir(parents=True, exist_ok=True)
    _write_new_file(private_path, private_pem, 0o600, replace=overwrite)
    _write_new_file(public_path, public_pem, 0o644, replace=overwrite)


def _write_new_file(path: Path, data: bytes, mode: int, replace: bool) -> None:
    """``data`` in a file created here with ``mode`` (never an existing file or a link's target)."""
    if not replace:
        # O_EXCL fails on anything already at the path, a dangling symlink included.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, mode)
        except FileExistsError:
            raise SigningKeyError(f"{path} exists; refusing to overwrite a key (use --force)") from None
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may only have narrowed it; make it exact
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return
    # mkstemp opens with O_CREAT | O_EXCL and mode 0600; rename replaces the directory
    # entry itself, so an old file keeps neither its content nor its mode, and a symlink
    # is replaced rather than followed.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def parse_private_key(pem: bytes, origin: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise SigningKeyError(f"{origin}: not an unencrypted PEM private key: {error}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{origin}: the key is {type(key).__name__}, an Ed25519 key is required")
    return key


def read_secret_key(secret_id: str, client=None) -> Ed25519PrivateKey:
    """The signing key from a Secrets Manager secret (its SecretString is the PEM)."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("secretsmanager")
    try:
        pem = client.get_secret_value(SecretId=secret_id)["SecretString"]
    except (BotoCoreError, ClientError, KeyError) as error:
        raise SigningKeyError(f"cannot read the signing key secret {secret_id}: {error}") from None
    return parse_private_key(pem.encode(), f"secret {secret_id}")


def load_private_key(path: Path | str | None = None) -> Ed25519PrivateKey:
    """The signing key from ``path``, else $MPD_GALLERY_SIGNING_KEY_FILE, else the Secrets Manager
    secret $MPD_GALLERY_SIGNING_KEY_SECRET, else $MPD_GALLERY_SIGNING_KEY (PEM)."""
    path = path or os.environ.get(KEY_FILE_ENV)
    if not path and os.environ.get(KEY_SECRET_ENV):
        return read_secret_key(os.environ[KEY_SECRET_ENV])
    if path:
        try:
            pem = Path(path).read_bytes()
        except OSError as error:
            raise SigningKeyError(f"cannot read signing key {path}: {error.strerror or error}") from None
        return parse_private_key(pem, str(path))
    pem_text = os.environ.get(KEY_ENV)
    if pem_text:
        return parse_private_key(pem_text.encode(), f"${KEY_ENV}")
    raise SigningKeyError(
        f"no gallery signing key: set {KEY_FILE_ENV} to a PEM file or {KEY_ENV} to its text "
        "(make one with `mpd keys generate`)"
    )


def signer(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    """The ``sign`` callable ``edge_app.gallery.bundle.write_bundle`` takes."""
    return key.sign


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@click.group("keys")
def keys_group() -> None:
    """Gallery signing keys."""


@keys_group.command("generate")
@click.option("--private", "private_path", type=click.Path(path_type=Path), default=Path("gallery-signing.key"),
              show_default=True, help="Private key (PEM, 0600). Keep it in the cloud only.")  # fmt: skip
@click.option("--public", "public_path", type=click.Path(path_type=Path), default=Path("gallery-signing.pub"),
              show_default=True, help="Public key (PEM) to install on devices.")  # fmt: skip
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def generate_command(private_path: Path, public_path: Path, force: bool) -> None:
    """Make an Ed25519 key pair for signing gallery bundles."""
    try:
        generate_key_pair(private_path, public_path, overwrite=force)
    except SigningKeyError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"private key: {private_path} (keep secret; set {KEY_FILE_ENV} for the builder)")
    click.echo(f"public key:  {public_path} (install on devices; `mpd sync --public-key`)")
