"""A hostile source server (or a man in the middle): memory bombs, bodies built to break the
parser, photo links and redirects to other hosts and to the cloud metadata service.

Each test re-runs an attack that worked before (issue 13, rows 5, 6 and 8) and checks the
new behaviour: the bad answer is an error for that request or case only, the run goes on,
nothing is asked of a host that is not allowed, and nothing of a refused body is kept.
All people are made up; photos are synthetic.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sync_service.dev_servers.fixtures import write_fixture_cases
from sync_service.dev_servers.server import BOMB_DECODED_BYTES, NON_IMAGE, SourceServer, gzip_bomb
from sync_service.http import ALLOW_LOOPBACK_ENV, BlockedRequest, BodyTooLarge, PoliteClient, is_allowed_host
from sync_service.ingest.engine import Ingest
from sync_service.sources import fbi, interpol, make_adapter, namus
from sync_service.sources.base import MAX_CASE_BYTES
from sync_service.sources.records import MalformedCase
from sync_service.store import LocalStore
from tests.process_memory import run_measuring_peak_rss
from tests.test_dev_servers import made_up_cases

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "sources"
METADATA_PATH = "/latest/meta-data/iam/security-credentials/"


class Canary:
    """A server that must never be asked anything: it records every request it gets."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                hits.append(self.path)
                body = b'{"AccessKeyId": "ASIA-CANARY", "SecretAccessKey": "canary"}'
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def canary():
    server = Canary()
    yield server
    server.close()


def local_client(**options) -> PoliteClient:
    """A fast client with the explicit opt-in for the dev servers on 127.0.0.1."""
    return PoliteClient(500, backoff_base=0.01, backoff_max=0.05, max_attempts=2, allow_loopback=True, **options)


def run_ingest(source: str, server: SourceServer, store_dir: Path, **adapter_options):
    adapter = make_adapter(source, server.url, client=local_client(), **adapter_options)
    return Ingest(adapter, LocalStore(store_dir)).run()


def peak_rss_mb(command: list[str], env: dict[str, str] | None = None) -> tuple[float, str, int]:
    """Run ``command``; its peak resident memory (MB), its stdout and its exit code."""
    result, peak = run_measuring_peak_rss(command, cwd=REPO, env={**os.environ, **(env or {})})
    return peak, result.stdout, result.returncode


# --- row 5: decoded size caps -------------------------------------------------------------


def test_the_bomb_fault_is_small_on_the_wire_and_huge_decoded():
    payload = b'{"id": 1}'
    bomb = gzip_bomb(payload)
    assert len(bomb) < 250_000
    inflater, decoded, start = zlib.decompressobj(16 + zlib.MAX_WBITS), 0, b""
    for offset in range(0, len(bomb), 65536):
        data = inflater.decompress(bomb[offset : offset + 65536], 1 << 20)
        while True:
            start = start or data[:20]
            decoded += len(data)
            if not inflater.unconsumed_tail:
                break
            data = inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    assert decoded == len(payload) + BOMB_DECODED_BYTES and start.startswith(payload) and inflater.eof


def test_a_gzip_bomb_is_refused_at_the_cap_without_ever_being_inflated(tmp_path):
    data = write_fixture_cases(tmp_path, "namus", made_up_cases(2), states=["Vermont", "Ohio"])
    with SourceServer("namus", data, faults="bomb=500") as server:
        client = local_client()
        tracemalloc.start()
        try:
            with pytest.raises(BodyTooLarge, match=f"larger than {MAX_CASE_BYTES} bytes after gzip decoding"):
                make_adapter("namus", server.url, client=client).fetch_case("MP500")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Only one decoding step past the 1 MiB cap is ever held, not the 200 MB.
        assert peak < 8 * 1024 * 1024, peak
        # The same bomb on a listing-sized request hits the default cap; the next request is fine.
        with pytest.raises(BodyTooLarge):
            client.get(server.url + "/api/CaseSets/NamUs/MissingPersons/Cases/500", max_bytes=4096)
        assert make_adapter("namus", server.url, client=client).fetch_case("MP501").case_id == "MP501"
    assert [r.status for r in server.requests] == [200, 200, 200]  # refused, not retried


def test_ingest_under_a_gzip_bomb_skips_only_that_case_and_stays_small(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(3), states=["Vermont", "Ohio"])
    with SourceServer("namus", data, faults="bomb=501") as server:
        command = [sys.executable, "-m", "mpd_cli", "ingest", "namus", "--base-url", server.url, "--store",
                   str(tmp_path / "store"), "--rate-limit", "100", "--json", "--no-progress", "--allow-loopback"]  # fmt: skip
        peak, out, code = peak_rss_mb(command)
    summary = json.loads(out)
    assert code == 0 and summary["new"] == 2
    assert list(summary["malformed"]) == ["MP501"] and "larger than" in summary["malformed"]["MP501"]
    # Before the cap this run peaked at about 1.2 GB (docs/ingest.md); a plain run needs ~60 MB.
    assert peak < 200, f"peak RSS {peak:.0f} MB"


def test_alert_case_lookup_under_a_gzip_bomb_falls_back_and_fits_the_lambda(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(1), states=["Vermont"])
    script = """
import json, sys, time
from sync_service.alerts.cases import CaseLookup
from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import source_fetcher
settings = AlertSettings(backend="local", source_urls={"namus": sys.argv[1]}, case_lookup_timeout=5)
started = time.monotonic()
details = CaseLookup(source_fetcher(settings), 5).details("namus", "MP500", "Dana Example")
print(json.dumps({"fresh": details.fresh, "name": details.name, "seconds": time.monotonic() - started}))
"""
    with SourceServer("namus", data, faults="bomb=500") as server:
        peak, out, code = peak_rss_mb([sys.executable, "-c", script, server.url], env={ALLOW_LOOPBACK_ENV: "1"})
    result = json.loads(out.strip().splitlines()[-1])  # the lines before are the handler's JSON log
    assert code == 0 and result["fresh"] is False and result["name"] == "Dana Example" and result["seconds"] < 5
    assert peak < 200, f"peak RSS {peak:.0f} MB (the alert Lambda has 256 MB)"


# --- row 6: malformed bodies of any kind ------------------------------------------------------

HOSTILE_VALUES = [
    None, True, 0, -1, 10**30, 1e308, float("nan"), "", " ", "x" * 5000, "9" * 5000, "\u00b2", "\udcff",
    "a\x00b\x1b[2J\u202e", "2021/99999999999999999999", [], {}, [[]] * 3, {"a": {"b": None}},
]  # fmt: skip


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:2]):
            yield from _paths(item, (*prefix, index))


def _replaced(body, path, value):
    if not path:
        return value
    body = copy.deepcopy(body)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


@pytest.mark.parametrize(
    ("fixture", "parse"),
    [
        ("namus_case_2025.json", namus.parse_case),
        ("namus_case_flat_2019.json", namus.parse_case),
        ("interpol_yellow_notice.json", interpol.parse_notice),
        ("fbi_list_page.json", fbi.parse_item),
    ],
)
def test_every_field_replaced_by_any_hostile_value_gives_a_record_or_a_named_malformed_case(fixture, parse):
    body = json.loads((FIXTURES / fixture).read_text())
    if fixture.startswith("fbi"):
        body = body["items"][0]
    tried = 0
    for path in list(_paths(body)):
        for value in HOSTILE_VALUES:
            tried += 1
            try:
                record = parse(_replaced(body, path, value))
            except MalformedCase:
                continue
            stored = record.model_dump_json()  # what the store writes: must be valid UTF-8 JSON
            assert "\udcff" not in stored and "\x1b" not in stored and "\u202e" not in stored, (path, value)
    assert tried > 400  # every field of the body, at every depth


def _write_hostile_namus_case(data: Path, number: int) -> None:
    """A case whose shape is wrong everywhere a type can be wrong."""
    body = json.loads((data / "cases" / f"{number}.json").read_text())
    body["subjectIdentification"] |= {"firstName": ["not", "a", "string"], "currentMinAge": {"x": 1}}
    body["sighting"] |= {"date": 5, "publicGeolocation": [1, 2, 3]}  # the state stays, for the dev server
    body["images"] = [None, 5, {"identityId": "9" * 5000}, {"identityId": {"a": 1}}]
    body["modifiedDateTime"] = 12345
    (data / "cases" / f"{number}.json").write_text(json.dumps(body))


def test_bodies_built_to_break_the_parser_are_skipped_by_case_id_and_the_run_finishes(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(7), states=["Vermont", "Ohio"])
    _write_hostile_namus_case(data, 505)
    faults = "deep=500,hugeint=501,badutf8=502,bomb=503,malformed=504"
    with SourceServer("namus", data, faults=faults) as server:
        summary = run_ingest("namus", server, tmp_path / "store")
        again = run_ingest("namus", server, tmp_path / "store")  # a rerun is not stuck on them either

    assert set(summary.malformed) == {"MP500", "MP501", "MP502", "MP503", "MP504"}
    assert "nested too deeply" in summary.malformed["MP500"]
    assert "digits" in summary.malformed["MP501"]
    assert "utf-8" in summary.malformed["MP502"].lower()
    assert "larger than" in summary.malformed["MP503"]
    # MP505's wrong types are dropped field by field; the person is still ingested.
    assert summary.new == 2 and not summary.fetch_failed
    stored = LocalStore(tmp_path / "store").get_case("namus", "MP505")
    assert stored is not None and stored.record.name == "Madeup" and not stored.photos
    assert stored.record.last_seen_date is None and stored.record.modified is None
    assert set(again.malformed) == set(summary.malformed) and again.unchanged == 2
    assert LocalStore(tmp_path / "store").read_json("state/ingest-namus/progress.json") is None  # run completed


def test_an_unforeseen_parser_error_is_a_skipped_case_not_a_stopped_run(tmp_path, caplog):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(3), states=["Vermont", "Ohio"])
    with SourceServer("namus", data) as server:
        adapter = make_adapter("namus", server.url, client=local_client())
        original = adapter.fetch_case

        def fetch_case(case_id: str):
            if case_id == "MP501":
                raise TypeError("'NoneType' object is not subscriptable")  # a parser bug a body can trigger
            return original(case_id)

        adapter.fetch_case = fetch_case
        summary = Ingest(adapter, LocalStore(tmp_path / "store")).run()
    assert summary.new == 2 and list(summary.malformed) == ["MP501"]
    assert "TypeError" in summary.malformed["MP501"] and "Traceback" in caplog.text  # the bug stays visible


# --- row 8: photo hosts, redirects, private addresses -----------------------------------------


def test_default_photo_hosts_admit_every_photo_of_the_real_api_responses(sources_dir):
    """The allow-lists are the real APIs' photo hosts: no real photo is refused by them."""
    urls = {"namus": [], "fbi": [], "interpol": []}
    for case in json.loads((sources_dir / "namus_MissingPersons_VirginIslands_2025-09-20.json").read_text()).values():
        urls["namus"] += [p.url for p in namus.parse_case(case, categories=None).photos]
    page = json.loads((sources_dir / "fbi_wanted_list_page1_2021-07.json").read_text())
    for item in page["items"]:
        urls["fbi"] += [p.url for p in fbi.parse_item(item).photos]
    red = json.loads((sources_dir / "interpol_red_list_2021-12-11.json").read_text())
    for notice in red["_embedded"]["notices"]:
        urls["interpol"] += [p.url for p in interpol.parse_notice(notice).photos]
    for source, found in urls.items():
        adapter = make_adapter(source, {"namus": "https://www.namus.gov", "fbi": "https://api.fbi.gov",
                                        "interpol": "https://ws-public.interpol.int"}[source])  # fmt: skip
        assert found, source
        assert all(is_allowed_host(url, adapter.photo_hosts) for url in found), source
        assert not is_allowed_host("http://169.254.169.254" + METADATA_PATH, adapter.photo_hosts)


def test_a_photo_link_to_another_host_is_refused_without_a_request(tmp_path, canary):
    data = write_fixture_cases(tmp_path / "src", "fbi", made_up_cases(2, start=700), states=["Ohio"])
    item_path = data / "items" / "700.json"
    item = json.loads(item_path.read_text())
    item["images"][0]["original"] = canary.url + METADATA_PATH  # a photo link to the metadata path
    item_path.write_text(json.dumps(item))
    with SourceServer("fbi", data) as server:
        summary = run_ingest("fbi", server, tmp_path / "store")
    assert canary.hits == []
    assert summary.new == 2 and summary.photos_stored == 1 and summary.photos_rejected == {"host not allowed": 1}
    case = LocalStore(tmp_path / "store").get_case("fbi", "700")
    assert case.photos == [] and case.rejected_photos[0].reason == "host not allowed"


def test_a_photo_host_on_the_allow_list_is_fetched(tmp_path, canary):
    """``--photo-host`` (``photo_hosts``) is what decides: the same link with the host allowed."""
    data = write_fixture_cases(tmp_path / "src", "fbi", made_up_cases(1, start=700), states=["Ohio"])
    item_path = data / "items" / "700.json"
    item = json.loads(item_path.read_text())
    item["images"][0]["original"] = canary.url + "/photo.jpg"
    item_path.write_text(json.dumps(item))
    with SourceServer("fbi", data) as server:
        summary = run_ingest("fbi", server, tmp_path / "store", photo_hosts=[canary.url.removeprefix("http://")])
    assert canary.hits == ["/photo.jpg"] and summary.photos_rejected == {"not an image": 1}


def test_a_redirect_to_another_host_is_not_followed(tmp_path, canary):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(2), states=["Vermont", "Ohio"])
    with SourceServer("namus", data, faults=f"redirect=500/5000,redirect_to={canary.url}{METADATA_PATH}") as server:
        summary = run_ingest("namus", server, tmp_path / "store")
    assert canary.hits == []
    assert summary.photos_stored == 1 and summary.photos_rejected == {"redirect refused": 1}
    (rejected,) = LocalStore(tmp_path / "store").get_case("namus", "MP500").rejected_photos
    assert METADATA_PATH in rejected.detail and "not allowed" in rejected.detail


def test_a_redirect_within_the_same_host_is_followed(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(2), states=["Vermont", "Ohio"])
    other_photo = "/api/CaseSets/NamUs/MissingPersons/Cases/501/Images/5010/Original"
    with SourceServer("namus", data, faults=f"redirect=500/5000,redirect_to={other_photo}") as server:
        summary = run_ingest("namus", server, tmp_path / "store")
    assert summary.photos_stored == 2 and not summary.photos_rejected
    assert [r.status for r in server.requests].count(302) == 1


def test_private_loopback_and_link_local_addresses_are_refused_by_resolved_address(tmp_path, monkeypatch):
    monkeypatch.delenv(ALLOW_LOOPBACK_ENV, raising=False)
    data = write_fixture_cases(tmp_path, "namus", made_up_cases(1), states=["Vermont"])
    client = PoliteClient(500, max_attempts=3)  # the default: no opt-in
    with SourceServer("namus", data) as server:
        port = server.url.rsplit(":", 1)[1]
        for url in (server.url, f"http://localhost:{port}", f"http://[::1]:{port}"):
            with pytest.raises(BlockedRequest, match="private, loopback or link-local") as error:
                # Even with the name on the allow-list: what it resolves to is what counts.
                client.get(url + "/api/CaseSets/NamUs/States", allowed_hosts=["localhost", "127.0.0.1", "::1"])
            assert error.value.reason == "private address"
        assert server.requests == []  # nothing reached it, and nothing was retried
    started = time.monotonic()
    for url in ("http://169.254.169.254" + METADATA_PATH, "http://10.1.2.3/", "http://[fd00::1]/"):
        with pytest.raises(BlockedRequest, match="private, loopback or link-local"):
            client.get(url)
    assert time.monotonic() - started < 1.0  # refused before any connection attempt
    assert client.stats.retries == 0
    # The opt-in admits loopback only: link-local (the metadata service) stays refused.
    with pytest.raises(BlockedRequest, match="private, loopback or link-local"):
        PoliteClient(500, allow_loopback=True).get("http://169.254.169.254" + METADATA_PATH)


def test_mpd_ingest_without_the_opt_in_refuses_a_local_source_and_says_how(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(1), states=["Vermont"])
    with SourceServer("namus", data) as server:
        result = subprocess.run(
            [sys.executable, "-m", "mpd_cli", "ingest", "namus", "--base-url", server.url, "--store",
             str(tmp_path / "store"), "--no-progress"],
            capture_output=True, text=True, cwd=REPO, env={k: v for k, v in os.environ.items() if k != ALLOW_LOOPBACK_ENV},
        )  # fmt: skip
        assert server.requests == []
    assert result.returncode == 2
    assert "loopback" in result.stderr and ALLOW_LOOPBACK_ENV in result.stderr


def test_nothing_of_a_refused_body_is_stored(tmp_path):
    data = write_fixture_cases(tmp_path / "src", "namus", made_up_cases(3), states=["Vermont", "Ohio"])
    with SourceServer("namus", data, faults="nonimage=500/5000,malformed=501") as server:
        summary = run_ingest("namus", server, tmp_path / "store")
    assert summary.photos_rejected == {"not an image": 1} and list(summary.malformed) == ["MP501"]
    html = NON_IMAGE.decode()
    for path in (tmp_path / "store").rglob("*"):
        if path.is_file():
            text = path.read_bytes().decode("utf-8", "replace")
            for fragment in (html[:16], "Access Denied", "DOCTYPE", "Reference #"):
                assert fragment not in text, (path, fragment)
    body = (data / "cases" / "501.json").read_text()
    assert body[40:80] not in summary.malformed["MP501"]  # no slice of the broken body either
