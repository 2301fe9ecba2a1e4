"""The device reaches S3 with awscrt's SigV4 query signing (no botocore on the device).

The signature is checked against botocore's presigner (the reference implementation) for
the same request, credentials and instant; credentials are also taken, as on a Greengrass
device, from a container-credentials endpoint like the one the Token Exchange Service runs
(a local HTTP server answering the documented JSON; it counts the requests it gets).
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from edge_app.gallery.transports import S3Source, SyncError

INSTANT = datetime(2026, 11, 29, 3, 0, 0, tzinfo=UTC)


def _clear_aws_env(monkeypatch) -> None:
    for name in (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _signed_at(source: S3Source, relpath: str, monkeypatch) -> str:
    """The source's URL with the signing clock fixed at INSTANT."""
    from awscrt import auth

    original = auth.AwsSigningConfig.__init__

    def fixed_date(self, *args, **kwargs):
        kwargs["date"] = INSTANT
        original(self, *args, **kwargs)

    monkeypatch.setattr(auth.AwsSigningConfig, "__init__", fixed_date)
    return source.url(relpath)


def _botocore_url(bucket: str, key: str, region: str, endpoint: str | None, token: str | None) -> str:
    from unittest import mock

    import boto3
    from botocore.config import Config

    session = boto3.Session(
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        aws_session_token=token,
        region_name=region,
    )
    style = "path" if endpoint else "virtual"
    client = session.client("s3", endpoint_url=endpoint, config=Config(signature_version="s3v4", s3={"addressing_style": style}))  # fmt: skip
    with mock.patch("botocore.auth.datetime") as clock:
        clock.datetime.now.return_value = INSTANT.replace(tzinfo=None)
        clock.datetime.utcnow.return_value = INSTANT.replace(tzinfo=None)
        clock.datetime.strptime = datetime.strptime
        return client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=3600)


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.mark.parametrize(
    ("endpoint", "relpath"),
    [
        (None, "latest.json"),
        (None, "full/2026.11.29 night/vectors.npy"),  # a space and a dot in the key
        ("http://127.0.0.1:9000", "delta/2026-11-29~1/labels.json"),
    ],
)
def test_awscrt_presigned_url_matches_botocore(monkeypatch, endpoint, relpath):
    _clear_aws_env(monkeypatch)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-from-tes")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    source = S3Source("s3://mpd-gallery-bucket/published/")
    ours = _signed_at(source, relpath, monkeypatch)
    reference = _botocore_url(
        "mpd-gallery-bucket", "published/" + relpath, "eu-west-1", endpoint, "session-token-from-tes"
    )
    assert urlsplit(ours)[:3] == urlsplit(reference)[:3]  # same scheme, host and encoded path
    assert _query(ours) == _query(reference)  # same credential scope, expiry, token and signature


def test_credentials_come_from_the_token_exchange_endpoint(monkeypatch):
    """As under Greengrass: no keys in the environment, a container-credentials URI and token."""
    seen: list[str | None] = []

    class Tes(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization"))
            body = json.dumps(
                {
                    "AccessKeyId": "ASIATESEXAMPLE",
                    "SecretAccessKey": "tes-secret",
                    "Token": "tes-session-token",
                    "Expiration": "2099-01-01T00:00:00Z",
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _clear_aws_env(monkeypatch)
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        uri = f"http://127.0.0.1:{server.server_port}/2016-11-01/credentialprovider/"
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "svcuid-of-the-component")
        monkeypatch.setenv("AWS_REGION", "eu-west-1")
        url = S3Source("s3://mpd-gallery-bucket/published").url("latest.json")
    finally:
        server.shutdown()
    assert seen and seen[0] == "svcuid-of-the-component"
    query = _query(url)
    assert query["X-Amz-Credential"].startswith("ASIATESEXAMPLE/")
    assert query["X-Amz-Security-Token"] == "tes-session-token"
    assert urlsplit(url).netloc == "mpd-gallery-bucket.s3.eu-west-1.amazonaws.com"


def test_no_credentials_is_a_clear_sync_error(monkeypatch):
    _clear_aws_env(monkeypatch)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    source = S3Source("s3://mpd-gallery-bucket/published")
    source.SIGN_TIMEOUT_S = 10.0
    with pytest.raises(SyncError, match="cannot sign the request for latest.json"):
        source.url("latest.json")
