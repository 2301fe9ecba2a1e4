"""A polite HTTP client for public case databases that publish no rate limit.

Every request waits its turn (default 1 request/s, retries included), says who is
asking (a descriptive User-Agent: the FBI WAF answers 403 without one), has
timeouts, and is retried with exponential backoff and jitter on 5xx, 429 and
timeouts. A ``Retry-After`` header is honoured as the minimum wait.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

log = logging.getLogger(__name__)

USER_AGENT = (
    "missing-person-alerts/0.1 (edge-first missing-person search; nightly ingest of public cases; "
    "+https://github.com/missing-person-alerts)"
)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


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
    """GET/POST with a rate limit, a User-Agent, timeouts and retries."""

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
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        self.limiter = RateLimiter(rate_limit)
        self.timeout = (connect_timeout, read_timeout)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.session = requests.Session()
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

    def request(self, method: str, url: str, *, max_bytes: int | None = None, **kwargs: Any) -> requests.Response:
        """One logical request. Returns the final response (any status that is not retried);
        raises ``HttpError`` when retries run out or the server is unreachable."""
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

    def _attempt(self, method: str, url: str, max_bytes: int | None, kwargs: dict[str, Any]) -> requests.Response:
        self.stats.request_starts.append(self.limiter.wait())
        self.stats.requests += 1
        try:
            response = self.session.request(method, url, timeout=self.timeout, stream=True, **kwargs)
            body = self._read_body(response, max_bytes, url)
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

    def _read_body(self, response: requests.Response, max_bytes: int | None, url: str) -> bytes:
        chunks, total = [], 0
        for chunk in response.iter_content(64 * 1024):
            total += len(chunk)
            if max_bytes is not None and total > max_bytes:
                response.close()
                raise BodyTooLarge(f"GET {url}: body is larger than {max_bytes} bytes", url, response.status_code)
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
        """The JSON body of a finished response; ``HttpError`` on non-2xx, ``MalformedResponse`` if not JSON."""
        if not response.ok:
            raise HttpError(
                f"{method} {url}: HTTP {response.status_code} {response.text[:200]!r}", url, response.status_code
            )
        try:
            return json.loads(response.content)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise MalformedResponse(
                f"{method} {url}: body is not JSON ({error}); starts {response.content[:60]!r}",
                url,
                response.status_code,
            ) from None

    def close(self) -> None:
        self.session.close()
