"""The polite HTTP client against a real local server: rate limit, User-Agent,
retries with backoff on 5xx/429/timeouts, Retry-After, and clear errors."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from sync_service.dev_servers.fixtures import write_fixture_cases
from sync_service.dev_servers.server import SourceServer
from sync_service.http import USER_AGENT, HttpError, MalformedResponse, PoliteClient, parse_retry_after
from tests.servers import free_port
from tests.test_dev_servers import made_up_cases

STATES = "/api/CaseSets/NamUs/States"


@pytest.fixture()
def data(tmp_path):
    return write_fixture_cases(tmp_path, "namus", made_up_cases(3), states=["Vermont", "Ohio"])


def fast_client(**options) -> PoliteClient:
    options = {"backoff_base": 0.01, "backoff_max": 0.05, "allow_loopback": True, **options}
    return PoliteClient(options.pop("rate_limit", 1000), **options)


def test_rate_limit_spaces_every_request(data):
    rate = 20.0
    with SourceServer("namus", data) as server:
        client = PoliteClient(rate, allow_loopback=True)  # the dev server is local
        for _ in range(12):
            client.get_json(server.url + STATES)
    # Sleeping never ends early, so no two requests start closer than 1/rate on the
    # client. The server's clock reads when its handler thread runs, which a loaded
    # machine delays now and then, so there the whole span is checked instead.
    starts = client.stats.request_starts
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 1 / rate
    arrivals = [r.at for r in server.requests]
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / rate - 0.02
    assert all(r.user_agent == USER_AGENT for r in server.requests)


def test_retries_count_against_the_rate_limit(data):
    with SourceServer("namus", data, faults="5xx=3") as server:
        client = fast_client(rate_limit=20)
        client.get_json(server.url + STATES)
    assert [r.status for r in server.requests] == [503, 503, 503, 200]
    starts = client.stats.request_starts
    assert min(b - a for a, b in zip(starts, starts[1:], strict=False)) >= 1 / 20
    assert client.stats.retries == 3 and client.stats.failures == {"HTTP 503": 3}


def test_429_waits_at_least_retry_after(data):
    with SourceServer("namus", data, faults="429=1:1") as server:
        client = fast_client()
        started = time.monotonic()
        client.get_json(server.url + STATES)
        assert time.monotonic() - started >= 1.0
    assert [r.status for r in server.requests] == [429, 200]


def test_retry_after_beyond_our_patience_fails_clearly(data):
    with SourceServer("namus", data, faults="429=1:3600") as server:
        with pytest.raises(HttpError, match="retry after 3600s"):
            fast_client(max_retry_after=60).get_json(server.url + STATES)
        assert len(server.requests) == 1  # no hammering


def test_timeout_is_retried(data):
    with SourceServer("namus", data, faults="slow=1.0:1") as server:
        client = fast_client(read_timeout=0.3)
        assert len(client.get_json(server.url + STATES)) == 2
    assert client.stats.failures == {"timeout (ReadTimeout)": 1}


def test_persistent_5xx_gives_up_naming_url_and_status(data):
    with SourceServer("namus", data, faults="5xx=100") as server:
        with pytest.raises(HttpError, match=r"States failed after 3 attempts: HTTP 503") as error:
            fast_client(max_attempts=3).get_json(server.url + STATES)
        assert error.value.status == 503
        assert len(server.requests) == 3


def test_server_down_is_a_clear_error():
    url = f"http://127.0.0.1:{free_port()}{STATES}"
    with pytest.raises(HttpError, match="connection error"):
        fast_client(max_attempts=2).get_json(url)


def test_malformed_json_is_not_retried_and_says_so(data):
    with SourceServer("namus", data, faults="malformed=*") as server:
        client = fast_client()
        with pytest.raises(MalformedResponse, match="body is not JSON"):
            client.get_json(server.url + "/api/CaseSets/NamUs/MissingPersons/Cases/500")
        assert len(server.requests) == 1


def test_4xx_is_not_retried(data):
    with SourceServer("namus", data) as server:
        client = fast_client()
        with pytest.raises(HttpError, match="HTTP 404"):
            client.get_json(server.url + "/api/nothing-here")
        assert len(server.requests) == 1


def test_body_size_cap(data):
    with SourceServer("namus", data) as server:
        with pytest.raises(HttpError, match="larger than 100 bytes"):
            fast_client().get(
                server.url + "/api/CaseSets/NamUs/MissingPersons/Cases/500/Images/5000/Original", max_bytes=100
            )


def test_retry_after_parsing():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0


def test_rate_limit_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        PoliteClient(0)
