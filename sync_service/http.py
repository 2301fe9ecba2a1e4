"""A polite, guarded HTTP client for public case databases that publish no rate limit.

Every request waits its turn (default 1 request/s, retries included), says who is
asking (a descriptive User-Agent: the FBI WAF answers 403 without one), has
timeouts, and is retried with exponential backoff and jitter on 5xx, 429 and
timeouts. A ``Retry-After`` header is honoured as the minimum wait.

A source (or anyone between us and it) is treated as possibly hostile: every answer
is capped by its size *after* decoding (a 200 KB gzip body can inflate to gigabytes),
only allowed hosts are asked and redirects are followed only to them, and no request
goes to a private, loopback or link-local address: the resolved address is checked
and the connection pinned to it (``requests-hardened``), so a name that resolves, or
re-resolves, to the cloud metadata service is refused. Loopback is allowed only on
explicit opt-in (``allow_loopback`` or ``$MPD_SOURCES_ALLOW_LOOPBACK=1``: the local
dev source servers).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests_hardened import Config, HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

log = logging.getLogger(__name__)

USER_AGENT = (
    "missing-person-alerts/0.1 (edge-first missing-person search; nightly ingest of public cases; "
    "+https://github.com/missing-person-alerts)"
)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# The default cap on a decoded answer (a JSON listing page). The largest real ones are
# far smaller: an FBI list page of 50 items is about 0.25 MB, a NamUs search page of
# 1000 rows about 0.2 MB. Parsed JSON can take ~25x its text in memory, so the cap
# bounds the parse too. Single case bodies and photos pass their own caps.
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
ALLOW_LOOPBACK_ENV = "MPD_SOURCES_ALLOW_LOOPBACK"


class HttpError(RuntimeError):
    """A request that did not succeed (after retries, where retrying made sense)."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class BodyTooLarge(HttpError):
    """The body went past the size cap (checked while streaming, so it is never all in memory)."""


class MalformedResponse(HttpError):
    """The server answered 200 but the body is not what was asked for (e.g. broken JSON)."""


class BlockedRequest(HttpError):
    """A request not sent, or a redirect not followed: the URL's scheme or host is not allowed
    for it, or its host resolves to a private, loopback or link-local address. Never retried."""

    def __init__(self, message: str, url: str, reason: str) -> None:
        super().__init__(message, url)
        self.reason = reason  # a short phrase for summaries: "host not allowed", "private address", ...


def host_key(url: str) -> str:
    """``host`` or ``host:port`` (when the URL names a port) of ``url``, lower case."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port is not None else host


def is_allowed_host(url: str, hosts: Collection[str]) -> bool:
    """True when the URL's host is in ``hosts``, either by name (any port) or as ``host:port``."""
    hostname = (urlsplit(url).hostname or "").lower()
    return bool(hostname) and (hostname in hosts or host_key(url) in hosts)


def check_target(url: str, hosts: Collection[str], what: str = "GET") -> None:
    """Raise ``BlockedRequest`` unless ``url`` is http(s) on one of ``hosts``."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise BlockedRequest(f"{what} {url}: only http and https URLs are fetched", url, "scheme not allowed")
    if not is_allowed_host(url, hosts):
        raise BlockedRequest(
            f"{what} {url}: host {host_key(url) or '(none)'} is not allowed here (allowed: {', '.join(sorted(hosts))})",
            url,
            "host not allowed",
        )


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


class RateLimiter:
    """Request starts at least ``1/rate`` seconds apart, measured from the actual start
    (a late wake-up delays the next slot rather than letting two requests bunch up)."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate limit must be positive, got {rate}")
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Block until this caller may start; returns the start time (monotonic)."""
        with self._lock:  # held while sleeping: waiters queue up in turn
            while True:
                now = time.monotonic()
                if now >= self._next:
                    self._next = now + self.interval
                    return now
                time.sleep(self._next - now)


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    request_starts: list[float] = field(default_factory=list)  # monotonic times, for the benchmark
    failures: dict[str, int] = field(default_factory=dict)  # retry reasons seen, e.g. "HTTP 503"


class PoliteClient:
    """GET/POST with a rate limit, a User-Agent, timeouts, retries, size caps and an address guard."""

    def __init__(
        self,
        rate_limit: float = 1.0,
        *,
        user_agent: str = USER_AGENT,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_retry_after: float = 300.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        allow_loopback: bool | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.limiter = RateLimiter(rate_limit)
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.max_body_bytes = max_body_bytes
        if allow_loopback is None:
            allow_loopback = os.environ.get(ALLOW_LOOPBACK_ENV, "").strip().lower() in ("1", "true", "yes")
        self.allow_loopback = allow_loopback
        # Resolves each host itself, refuses private/loopback/link-local addresses and pins
        # the connection to the checked address (no second lookup an attacker could change).
        # Redirects are never followed by the session: ``request`` follows them to allowed hosts.
        self.session = HTTPSession(
            Config(
                ip_filter_enable=True,
                ip_filter_allow_loopback_ips=allow_loopback,
                never_redirect=True,
                default_timeout=self.timeout,
            )
        )
        self.session.headers.update({"User-Agent": user_agent, "Accept": "application/json, image/*;q=0.9"})
        if extra_headers:
            self.session.headers.update(extra_headers)
        self.stats = ClientStats()

    def _wait_seconds(self, state: RetryCallState) -> float:
        # Full jitter on an exponential backoff, but never shorter than Retry-After.
        backoff = random.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (state.attempt_number - 1)))
        error = state.outcome.exception() if state.outcome else None
        retry_after = error.retry_after if isinstance(error, _Retryable) else None
        return max(backoff, retry_after or 0.0)

    def _before_sleep(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = error.reason if isinstance(error, _Retryable) else repr(error)
        self.stats.retries += 1
        self.stats.failures[reason] = self.stats.failures.get(reason, 0) + 1
        log.warning("retrying after %s (attempt %d, waiting %.1fs)", reason, state.attempt_number, state.upcoming_sleep)

    def request(
        self,
        method: str,
        url: str,
        *,
        max_bytes: int | None = None,
        allowed_hosts: Collection[str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """One logical request. Returns the final response (any status that is not retried);
        raises ``HttpError`` when retries run out or the server is unreachable,
        ``BodyTooLarge`` past ``max_bytes`` (default ``max_body_bytes``) decoded bytes, and
        ``BlockedRequest`` for a URL or redirect outside ``allowed_hosts`` (default: the
        URL's own host) or an address that is not public."""
        max_bytes = self.max_body_bytes if max_bytes is None else max_bytes
        hosts = frozenset(h.lower() for h in allowed_hosts) if allowed_hosts is not None else {host_key(url)}
        check_target(url, hosts, method)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._with_retries(method, url, max_bytes, kwargs)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise BlockedRequest(f"{method} {url}: redirect to {target} leaves https; not followed", url,
                                     "redirect refused")  # fmt: skip
            try:
                check_target(target, hosts, f"{method} {url}: redirect to")
            except BlockedRequest as error:
                raise BlockedRequest(str(error), url, "redirect refused") from None
            if response.status_code == 303 or (response.status_code in (301, 302) and method == "POST"):
                method, kwargs = "GET", {k: v for k, v in kwargs.items() if k not in ("json", "data")}
            url = target
        raise HttpError(f"{method} {url}: more than {MAX_REDIRECTS} redirects", url)

    def _with_retries(self, method: str, url: str, max_bytes: int, kwargs: dict[str, Any]) -> requests.Response:
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=self._wait_seconds,
            retry=retry_if_exception(lambda error: isinstance(error, _Retryable)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, url, max_bytes, kwargs)
        except _Retryable as error:
            raise HttpError(
                f"{method} {url} failed after {self.max_attempts} attempts: {error.reason}",
                url,
                getattr(error, "status", None),
            ) from None

    def _attempt(self, method: str, url: str, max_bytes: int, kwargs: dict[str, Any]) -> requests.Response:
        self.stats.request_starts.append(self.limiter.wait())
        self.stats.requests += 1
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True, **kwargs)
            body = self._read_body(response, max_bytes, method, url)
        except InvalidIPAddress as error:  # raised before anything is sent
            raise BlockedRequest(
                f"{method} {url}: {urlsplit(url).hostname} resolves to {error}, a private, loopback or link-local "
                f"address; not fetched"
                + ("" if self.allow_loopback else f" (local dev servers: {ALLOW_LOOPBACK_ENV}=1)"),
                url,
                "private address",
            ) from None
        except requests.Timeout as error:
            raise _Retryable(f"timeout ({type(error).__name__})") from None
        except requests.ConnectionError as error:
            raise _Retryable(f"connection error ({type(error).__name__})") from None
        except requests.RequestException as error:  # e.g. a body cut short by the peer
            raise _Retryable(f"transfer error ({type(error).__name__})") from None
        response._content = body  # requests' own cache of the body: .content/.json() now return what we read
        if response.status_code in RETRY_STATUSES:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None and retry_after > self.max_retry_after:
                raise HttpError(
                    f"{method} {url}: HTTP {response.status_code} asks to retry after {retry_after:.0f}s, "
                    f"more than the {self.max_retry_after:.0f}s we wait",
                    url,
                    response.status_code,
                )
            error = _Retryable(f"HTTP {response.status_code}", retry_after)
            error.status = response.status_code  # type: ignore[attr-defined]
            raise error
        return response

    def _read_body(self, response: requests.Response, max_bytes: int, method: str, url: str) -> bytes:
        """The decoded body, read in chunks and abandoned as soon as it passes ``max_bytes``.

        requests/urllib3 (>= 2.6) decode gzip, deflate, br and zstd in bounded steps, so a
        small compressed answer that inflates to gigabytes costs at most one step past the
        cap, never the whole expansion.
        """

        def too_large() -> BodyTooLarge:
            response.close()
            encoding = response.headers.get("Content-Encoding")
            return BodyTooLarge(
                f"{method} {url}: answer larger than {max_bytes} bytes"
                + (f" after {encoding} decoding" if encoding else "")
                + "; not read further",
                url,
                response.status_code,
            )

        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes and not response.headers.get("Content-Encoding"):
            raise too_large()
        chunks, total = [], 0
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if total > max_bytes:
                raise too_large()
            chunks.append(chunk)
        self.stats.bytes_received += total
        return b"".join(chunks)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def get_json(self, url: str, **kwargs: Any) -> Any:
        """GET and parse JSON; raises ``HttpError`` on a non-2xx status and
        ``MalformedResponse`` when the body is not JSON."""
        return self.json_of(self.request("GET", url, **kwargs), "GET", url)

    def post_json(self, url: str, body: Any, **kwargs: Any) -> Any:
        return self.json_of(self.request("POST", url, json=body, **kwargs), "POST", url)

    @staticmethod
    def json_of(response: requests.Response, method: str, url: str) -> Any:
        """The JSON body of a finished response; ``HttpError`` on non-2xx, ``MalformedResponse``
        if it is not JSON we can hold (broken, invalid UTF-8, nested too deeply, a number
        too long to convert). No part of a refused body is put in the message."""
        what = f"{response.headers.get('Content-Type') or 'no content type'}, {len(response.content)} bytes"
        if not 200 <= response.status_code < 300:
            raise HttpError(f"{method} {url}: HTTP {response.status_code} ({what})", url, response.status_code)
        try:
            return json.loads(response.content)
        except RecursionError:
            raise MalformedResponse(f"{method} {url}: body is not JSON we can read (nested too deeply; {what})", url,
                                    response.status_code) from None  # fmt: skip
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, int digits limit
            reason = str(error).split(";")[0][:160]
            raise MalformedResponse(f"{method} {url}: body is not JSON ({reason}; {what})", url,
                                    response.status_code) from None  # fmt: skip

    def close(self) -> None:
        self.session.close()
