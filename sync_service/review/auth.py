"""Who may review: a user file with Argon2id hashes on one machine, Cognito on AWS.

Either way a login yields a ``Reviewer``: a user name and the sites they are assigned
to (the page shows nothing of any other site). In the user file the sites are listed
per user (``mpd users add``); in Cognito they are groups named ``site-<site id>``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")
SITE_GROUP_PREFIX = "site-"
MIN_PASSWORD = 12


@dataclass(frozen=True)
class Reviewer:
    username: str
    sites: frozenset[str]


class AuthError(Exception):
    """Login refused for a reason the person may be told (never which part was wrong)."""


class Authenticator(Protocol):
    def authenticate(self, username: str, password: str) -> Reviewer:
        """The reviewer, or ``AuthError``."""
        ...


# Argon2id with argon2-cffi's defaults (RFC 9106 low-memory profile: t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
# Verified against when the user does not exist, so a wrong name takes as long as a wrong password.
_DUMMY = _hasher.hash("not a real password, only for timing")


class UserFile:
    """``{"users": {name: {"password": argon2 hash, "sites": [...]}}}``, written 0600."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"users": {}}
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"user file {self.path} is unreadable: {error}") from None
        if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
            raise ValueError(f"user file {self.path} has no 'users' object")
        return data

    def _save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".users-")  # 0600 by mkstemp
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path)

    def add(self, username: str, password: str, sites: list[str]) -> None:
        """Add or replace a user; raises ``ValueError`` naming what is wrong."""
        if not USERNAME.match(username):
            raise ValueError(f"user name {username!r}: use 2-64 lowercase letters, digits, '.', '_', '@', '-'")
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"password: at least {MIN_PASSWORD} characters")
        if not sites:
            raise ValueError("give at least one site the user reviews (--site)")
        with self._lock:
            data = self._load()
            data["users"][username] = {"password": _hasher.hash(password), "sites": sorted(set(sites))}
            self._save(data)

    def remove(self, username: str) -> bool:
        with self._lock:
            data = self._load()
            removed = data["users"].pop(username, None) is not None
            self._save(data)
        return removed

    def users(self) -> dict[str, list[str]]:
        return {name: entry.get("sites", []) for name, entry in self._load()["users"].items()}

    def authenticate(self, username: str, password: str) -> Reviewer:
        entry = self._load()["users"].get(username.strip().lower())
        try:
            _hasher.verify(entry["password"] if entry else _DUMMY, password)
        except (VerificationError, InvalidHashError):
            raise AuthError("wrong user name or password") from None
        if entry is None:
            raise AuthError("wrong user name or password")
        if _hasher.check_needs_rehash(entry["password"]):
            self.add(username.strip().lower(), password, entry["sites"])
        return Reviewer(username.strip().lower(), frozenset(entry.get("sites", [])))


class CognitoAuth:
    """Cognito user pool: USER_PASSWORD_AUTH from the server over TLS, then the user's groups."""

    def __init__(self, client: Any, user_pool_id: str, client_id: str) -> None:
        self.client = client
        self.user_pool_id = user_pool_id
        self.client_id = client_id

    def authenticate(self, username: str, password: str) -> Reviewer:
        from botocore.exceptions import ClientError

        try:
            response = self.client.initiate_auth(
                ClientId=self.client_id,
                AuthFlow="USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": password},
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NotAuthorizedException", "UserNotFoundException", "UserNotConfirmedException"):
                raise AuthError("wrong user name or password") from None
            raise
        if "AuthenticationResult" not in response:
            # e.g. NEW_PASSWORD_REQUIRED: the account is set up with the AWS console or CLI.
            raise AuthError(f"the account needs attention first ({response.get('ChallengeName', 'challenge')})")
        user = self.client.get_user(AccessToken=response["AuthenticationResult"]["AccessToken"])
        name = user["Username"]
        groups = self.client.admin_list_groups_for_user(UserPoolId=self.user_pool_id, Username=name)["Groups"]
        sites = {
            g["GroupName"][len(SITE_GROUP_PREFIX) :] for g in groups if g["GroupName"].startswith(SITE_GROUP_PREFIX)
        }
        return Reviewer(name, frozenset(sites))
