"""Builds the review app from the environment: the one place local and AWS differ.

Locally: reviewers from the user file (``$MPD_ALERT_DIR/users.json`` or
``MPD_REVIEW_USERS``), the session key from ``$MPD_ALERT_DIR/review-session.key``
(made 0600 on first use). On AWS: Cognito (``MPD_COGNITO_USER_POOL_ID``,
``MPD_COGNITO_CLIENT_ID``) and the session key from Secrets Manager
(``MPD_REVIEW_SECRET_ARN``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from sync_service.alerts.config import AlertSettings
from sync_service.review.auth import Authenticator, CognitoAuth, UserFile
from sync_service.review.records import load_or_create_key
from sync_service.review.service import ReviewService
from sync_service.review.web import create_app

DEFAULT_SESSION_MINUTES = 30


def users_file(settings: AlertSettings, env: Mapping[str, str] | None = None) -> UserFile:
    env = os.environ if env is None else env
    return UserFile(Path(env.get("MPD_REVIEW_USERS") or settings.local_dir / "users.json"))


def build_app(settings: AlertSettings, review: ReviewService, env: Mapping[str, str] | None = None) -> Flask:
    env = os.environ if env is None else env
    auth: Authenticator
    if env.get("MPD_COGNITO_USER_POOL_ID"):
        import boto3

        auth = CognitoAuth(
            boto3.client("cognito-idp"), env["MPD_COGNITO_USER_POOL_ID"], env.get("MPD_COGNITO_CLIENT_ID", "")
        )
    else:
        auth = users_file(settings, env)
    if env.get("MPD_REVIEW_SECRET_ARN"):
        import boto3

        secret = boto3.client("secretsmanager").get_secret_value(SecretId=env["MPD_REVIEW_SECRET_ARN"])
        key = secret["SecretString"].encode()
    elif settings.backend == "aws":  # against moto: nothing is written locally; sessions end with the process
        key = secrets.token_bytes(32)
    else:
        key = load_or_create_key(settings.local_dir / "review-session.key")
    try:
        minutes = int(env.get("MPD_REVIEW_SESSION_MINUTES", DEFAULT_SESSION_MINUTES))
    except ValueError:
        raise ValueError("MPD_REVIEW_SESSION_MINUTES is not a whole number of minutes") from None
    return create_app(
        review, auth, key, session_minutes=minutes, secure_cookies=settings.review_url.startswith("https://")
    )
