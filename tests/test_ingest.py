"""Ingest end to end against the dev source servers: incremental, resumable after a
kill, every fault survived, S3 through a real moto server.

Case photos are real photos from ../shared/data/faces copied into a temporary
dev-server folder at test time, attached to made-up cases."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sync_service.dev_servers.fixtures import FixtureCase, FixturePhoto, remove_fixture_case, write_fixture_cases
from sync_service.dev_servers.server import SourceServer
from sync_service.http import PoliteClient
from sync_service.ingest.engine import Ingest, IngestSummary, SourceDown
from sync_service.sources import make_adapter
from sync_service.sources.records import PersonRecord
from sync_service.store import LocalStore, Store, StoredCase, open_store
from tests.servers import free_port
from tests.test_dev_servers import made_up_cases

STATES = ["Vermont", "Ohio"]


@pytest.fixture(scope="module")
def face_photos(faces_dir) -> list[Path]:
    photos = sorted(faces_dir.glob("gallery/*/*.jpg"))
    assert len(photos) >= 20, f"expected real face photos in {faces_dir}/gallery"
    return photos


def namus_cases(photos: list[Path], count: int, start: int = 1000) -> list[FixtureCase]:
    return [
        FixtureCase(
            case_id=start + i,
            first_name=f"Made{i}",
            last_name="Up",
            sex="Female" if i % 2 else "Male",
            age_now=40,
            age_when_missing=30,
            state=STATES[i % 2],
            namus_shape="flat" if i % 4 == 3 else "2025",
            photos=[FixturePhoto(photos[i], mime_type="image/jpg")],
        )
        for i in range(count)
    ]


def ingest(source: str, server: SourceServer, store: Store, **options) -> IngestSummary:
    client = PoliteClient(
        options.pop("rate_limit", 500), backoff_base=0.01, backoff_max=0.05, max_attempts=4, allow_loopback=True
    )
    return Ingest(make_adapter(source, server.url, client=client), store, **options).run()


def snapshot(store: Store) -> dict[str, object]:
    """Everything in the store but checkpoints and timestamps, for comparing two stores."""
    out: dict[str, object] = {}
    for key in store.list_keys(""):
        if key.startswith("state/"):
            continue
        data = store.read_bytes(key)
        if key.endswith(".json"):
            value = json.loads(data)
            value.pop("ingested_at", None)
            out[key] = value
        else:
            out[key] = hashlib.sha256(data).hexdigest()
    return out


def case_requests(server: SourceServer) -> list[str]:
    return [r.path for r in server.requests if "/Cases/" in r.path and "/Images/" not in r.path]


def test_first_run_stores_everything_and_second_run_fetches_nothing(tmp_path, face_photos):
    cases = namus_cases(face_photos, 6)
    data = write_fixture_cases(tmp_path / "data", "namus", cases, states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        first = ingest("namus", server, store)
        assert (first.cases_seen, first.new, first.photos_stored) == (6, 6, 6)
        stored = {c.record.case_id: c for c in store.iter_cases()}
        assert sorted(stored) == [f"MP{1000 + i}" for i in range(6)]
        for i, case in enumerate(cases):
            photo = stored[f"MP{case.case_id}"].photos[0]
            original = face_photos[i].read_bytes()
            assert photo.sha256 == hashlib.sha256(original).hexdigest()
            assert store.read_photo(photo) == original and photo.mime_type == "image/jpeg"
            assert stored[f"MP{case.case_id}"].scopes == [case.state]
        assert stored["MP1003"].record.last_seen_place == "Springfield, OH"  # the flat shape

        server.requests.clear()
        second = ingest("namus", server, store)
        assert (second.new, second.changed, second.unchanged) == (0, 0, 6)
        # States + one Search per state; no case and no photo fetched again.
        assert [r.path.rsplit("/", 1)[-1] for r in server.requests] == ["States", "Search", "Search"]
        assert store.read_json("state/last-run-namus.json")["unchanged"] == 6


def test_changes_resolutions_and_removals_reach_the_store(tmp_path, face_photos):
    cases = namus_cases(face_photos, 6)
    data = write_fixture_cases(tmp_path / "data", "namus", cases, states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        ingest("namus", server, store)
        resolved_photo = store.get_case("namus", "MP1001").photos[0].key

        changed, resolved = cases[0], cases[1]
        changed.modified, changed.photos = "2026-03-01T00:00:00", [FixturePhoto(face_photos[10], photo_id=77)]
        resolved.modified, resolved.resolved = "2026-03-01T00:00:00", True
        remove_fixture_case(data, "namus", 1002)
        newcomer = namus_cases(face_photos[12:], 1, start=2000)
        unpublished = cases[3]
        unpublished.modified = "2026-03-01T00:00:00"
        write_fixture_cases(data, "namus", [changed, resolved, unpublished, *newcomer])
        server.faults.gone = frozenset({"1003"})  # the (stale) search lists it, the case 404s

        summary = ingest("namus", server, store)
    assert (summary.new, summary.changed, summary.unchanged) == (1, 1, 2)
    assert dict(summary.removed) == {"resolved": 1, "no longer listed": 1, "not found": 1}
    assert summary.not_found == ["MP1003"]
    assert sorted(c.record.case_id for c in store.iter_cases()) == ["MP1000", "MP1004", "MP1005", "MP2000"]
    updated = store.get_case("namus", "MP1000")
    assert [p.photo_id for p in updated.photos] == ["77"]
    assert list(store.list_keys("photos/namus/MP1000/")) == ["photos/namus/MP1000/77.jpg"]  # old photo gone
    # A found person's photos are deleted, the record stays (marked) so the gallery drops them.
    assert store.read_bytes(resolved_photo) is None
    gone = store.get_case("namus", "MP1001")
    assert gone.removed and gone.removed_reason == "resolved" and gone.photos == []


def test_bad_input_never_stops_a_run(tmp_path, face_photos):
    cases = namus_cases(face_photos, 8)
    data = write_fixture_cases(tmp_path / "data", "namus", cases[:6], states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        ingest("namus", server, store)
        before = store.read_bytes("cases/namus/MP1004.json")
        for case in cases:
            case.modified = "2026-04-01T00:00:00"
        write_fixture_cases(data, "namus", cases)  # all changed, two new ones
        server.faults.malformed = frozenset({"1004"})
        server.faults.truncated = frozenset({"10060"})
        server.faults.non_image = frozenset({"10070"})
        server.faults.server_errors = 1
        summary = ingest("namus", server, store)
    assert list(summary.malformed) == ["MP1004"] and "not JSON" in summary.malformed["MP1004"]
    assert dict(summary.photos_rejected) == {"truncated image": 1, "not an image": 1}
    assert store.read_bytes("cases/namus/MP1004.json") == before  # the old version is kept as it was
    truncated = store.get_case("namus", "MP1006")
    assert truncated.photos == [] and truncated.rejected_photos[0].reason == "truncated image"
    assert list(store.list_keys("photos/namus/MP1006/")) == []
    assert (summary.changed, summary.new) == (5, 2)  # the rest went through, each after a 503 and a retry
    assert summary.fetch_failed == {}


def test_429_with_retry_after_is_honoured_in_a_run(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 1), states=["Vermont"])
    with SourceServer("namus", data, faults="429=1:1") as server:
        started = time.monotonic()
        summary = ingest("namus", server, LocalStore(tmp_path / "store"))
        elapsed = time.monotonic() - started
    assert summary.new == 1
    statuses = [r.status for r in server.requests]
    assert statuses.count(429) == 4 and statuses.count(200) == 4  # States, Search, case, photo
    assert elapsed >= 4.0  # Retry-After: 1 on each


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mpd_cli", "ingest", *args, "--allow-loopback"],  # the dev servers are local
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_killed_run_resumes_to_the_same_store(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 14), states=STATES)
    with SourceServer("namus", data) as server:
        reference = LocalStore(tmp_path / "reference")
        ingest("namus", server, reference)

        killed = tmp_path / "killed"
        args = ["namus", "--base-url", server.url, "--store", str(killed), "--rate-limit", "10", "--no-progress"]
        process = run_cli(*args)
        deadline = time.monotonic() + 60
        while len(list((killed / "cases" / "namus").glob("*.json"))) < 5:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "ingest made no progress"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        stored_before = len(list((killed / "cases" / "namus").glob("*.json")))
        assert stored_before < 14, "the run finished before it could be killed"
        assert (killed / "state" / "ingest-namus" / "listing.json").exists()

        server.requests.clear()
        resumed = run_cli(*args[:-1], "--rate-limit", "200", "--json")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        summary = json.loads(out)
    assert summary["resumed"] is True and summary["cases_seen"] == 14
    # Counters are checkpointed every 2 s: cases finished after the last checkpoint are
    # found already stored on resume and counted as unchanged, not lost or repeated.
    assert summary["new"] + summary["unchanged"] == 14 and summary["changed"] == 0
    assert snapshot(LocalStore(killed)) == snapshot(reference)
    assert not (killed / "state" / "ingest-namus" / "progress.json").exists()
    # Resume cost: the listing came from the checkpoint, finished cases were not fetched again.
    assert not any(r.path.endswith(("/States", "/Search")) for r in server.requests)
    assert len(case_requests(server)) <= 14 - stored_before + 1


def test_fbi_ingest_end_to_end(tmp_path, face_photos):
    cases = [
        FixtureCase(case_id=f"f{i:031x}", first_name=f"Fbi{i}", last_name="Madeup", photos=[face_photos[20 + i]],
                    fbi_subject="Seeking Information" if i == 3 else "ViCAP Missing Persons")
        for i in range(4)
    ]  # fmt: skip
    data = write_fixture_cases(tmp_path / "data", "fbi", cases)
    store = LocalStore(tmp_path / "store")
    with SourceServer("fbi", data) as server:
        first = ingest("fbi", server, store)
        assert (first.new, first.photos_stored) == (3, 3)  # "Seeking Information" is not a missing person
        # Items come with the listing: no per-person request.
        assert not any(r.path.startswith("/@wanted-person") for r in server.requests)
        server.requests.clear()
        assert ingest("fbi", server, store).unchanged == 3
        assert all(r.path.startswith("/wanted/v1/list") for r in server.requests)
        adapter = make_adapter("fbi", server.url, rate_limit=100, allow_loopback=True)
        assert adapter.fetch_case(cases[0].case_id).name == "Fbi0 Madeup"
        assert adapter.fetch_case("f" * 32) is None


def test_interpol_ingest_end_to_end(tmp_path, face_photos):
    cases = [
        FixtureCase(case_id=f"2025-{100 + i}", first_name=f"Ipol{i}", last_name="Madeup", age_now=20 + i,
                    sex="Female", photos=[face_photos[30 + i]])
        for i in range(3)
    ]  # fmt: skip
    data = write_fixture_cases(tmp_path / "data", "interpol", cases)
    store = LocalStore(tmp_path / "store")
    with SourceServer("interpol", data) as server:
        first = ingest("interpol", server, store)
        assert (first.new, first.photos_stored) == (3, 3)
        second = ingest("interpol", server, store)
        # No modified time in the API: notices are read again, photos are not downloaded again.
        assert (second.unchanged, second.photos_stored, second.photos_kept) == (3, 0, 3)
        remove_fixture_case(data, "interpol", "2025-101")
        third = ingest("interpol", server, store)
    assert dict(third.removed) == {"no longer listed": 1}
    assert sorted(c.record.case_id for c in store.iter_cases()) == ["2025-100", "2025-102"]


def test_interpol_window_is_crawled_by_partition(tmp_path):
    # 170 notices: more than one query can show, so the adapter splits by sex (no photos needed).
    cases = [FixtureCase(case_id=f"2024-{i}", first_name="A", last_name=f"B{i}", sex="Female" if i % 2 else "Male")
             for i in range(170)]  # fmt: skip
    data = write_fixture_cases(tmp_path / "data", "interpol", cases)
    with SourceServer("interpol", data) as server:
        adapter = make_adapter("interpol", server.url, rate_limit=500, allow_loopback=True)
        assert len({s.case_id for s in adapter.list_scope("")}) == 170
        assert adapter.incomplete == {}


def test_interpol_unreachable_notices_make_the_listing_incomplete(tmp_path):
    # 170 women with no birth date: no sex or age window brings the last 10 into view.
    cases = [FixtureCase(case_id=f"2024-{i}", first_name="A", last_name=f"B{i}", sex="Female") for i in range(170)]
    data = write_fixture_cases(tmp_path / "data", "interpol", cases)
    store = LocalStore(tmp_path / "store")
    store.put_case(StoredCase(record=PersonRecord(source="interpol", case_id="2024-0", name="Earlier Seen")))
    with SourceServer("interpol", data) as server:
        summary = ingest("interpol", server, store, rate_limit=5000)
    assert summary.cases_seen == 160 and summary.listing_incomplete == {
        "": "160 of 170 notices reachable through the 160-result window"
    }
    assert "vanished cases not checked" in summary.vanished_check
    assert store.get_case("interpol", "2024-0").active  # not reached this time, so not judged gone


def test_ingest_into_s3(aws, tmp_path, face_photos):
    import boto3

    boto3.client("s3").create_bucket(Bucket="mpd-ingest")
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 3), states=STATES)
    store = open_store("s3://mpd-ingest/cases-store")
    with SourceServer("namus", data) as server:
        assert ingest("namus", server, store).new == 3
        assert ingest("namus", server, store).unchanged == 3
    cases = list(open_store("s3://mpd-ingest/cases-store").iter_cases())
    assert len(cases) == 3
    assert store.read_photo(cases[0].photos[0]) == face_photos[0].read_bytes()


def test_cli_summary_limit_and_states(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 4), states=STATES)
    with SourceServer("namus", data) as server:
        common = ["namus", "--base-url", server.url, "--store", str(tmp_path / "s"), "--rate-limit", "200"]
        out, err = run_cli(*common, "--states", "VT", "--limit", "1").communicate(timeout=60)
        assert "1 cases seen, 1 new" in out and "vanished cases not checked" in out, err
        bad = run_cli(*common, "--states", "Atlantis")
        _, err = bad.communicate(timeout=60)
        assert bad.returncode == 2 and "unknown NamUs state(s) ['Atlantis']" in err


def test_source_down_stops_cleanly_and_keeps_the_store(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 2), states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        ingest("namus", server, store)
    before = snapshot(store)
    process = run_cli("namus", "--base-url", f"http://127.0.0.1:{free_port()}", "--store", str(store.root),
                      "--retries", "1", "--rate-limit", "100")  # fmt: skip
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "ingest stopped" in err and "connection error" in err
    assert snapshot(store) == before


def test_source_failing_mid_run_stops_after_a_few_cases_and_resumes(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 9), states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:

        def source_goes_down(case_id: str) -> None:
            server.faults.server_errors = 10_000

        client = PoliteClient(500, backoff_base=0.01, max_attempts=2, allow_loopback=True)
        run = Ingest(make_adapter("namus", server.url, client=client), store, max_consecutive_failures=3,
                     on_case=source_goes_down)  # fmt: skip
        with pytest.raises(SourceDown, match="failed 3 cases in a row"):
            run.run()
        assert len(list(store.iter_cases())) == 1
        server.faults.server_errors = 0
        summary = ingest("namus", server, store)
    assert summary.resumed and summary.new == 9 and summary.fetch_failed == {}
    assert len(list(store.iter_cases())) == 9


def test_rejected_photo_gets_another_chance_next_run(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 2), states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data, faults="nonimage=10000") as server:
        first = ingest("namus", server, store)
        assert dict(first.photos_rejected) == {"not an image": 1}
        server.faults.non_image = frozenset()  # the WAF page was a passing thing
        second = ingest("namus", server, store)
    assert (second.changed, second.unchanged, second.photos_stored) == (1, 1, 1)
    case = store.get_case("namus", "MP1000")
    assert case.rejected_photos == [] and store.read_photo(case.photos[0]) == face_photos[0].read_bytes()


def test_oversized_photo_is_rejected_without_reading_it_all(tmp_path, face_photos, monkeypatch):
    monkeypatch.setattr("sync_service.sources.base.MAX_PHOTO_BYTES", 1000)
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 1), states=STATES)
    with SourceServer("namus", data) as server:
        summary = ingest("namus", server, LocalStore(tmp_path / "store"))
    assert dict(summary.photos_rejected) == {"too large": 1}


def test_stale_checkpoint_is_not_resumed(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 4), states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:

        def source_goes_down(case_id: str) -> None:
            server.faults.server_errors = 10_000

        client = PoliteClient(500, backoff_base=0.01, max_attempts=1, allow_loopback=True)
        with pytest.raises(SourceDown):
            Ingest(make_adapter("namus", server.url, client=client), store, max_consecutive_failures=1,
                   on_case=source_goes_down).run()  # fmt: skip
        server.faults.server_errors = 0
        server.faults.seen.clear()
        client = PoliteClient(500, allow_loopback=True)
        summary = Ingest(make_adapter("namus", server.url, client=client), store, max_checkpoint_age=0).run()
    assert not summary.resumed and (summary.new, summary.unchanged) == (3, 1)


def test_sigterm_saves_the_checkpoint_on_the_way_out(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 10), states=STATES)
    store = tmp_path / "store"
    with SourceServer("namus", data) as server:
        args = ["namus", "--base-url", server.url, "--store", str(store), "--rate-limit", "10", "--no-progress"]
        process = run_cli(*args)
        while len(list((store / "cases" / "namus").glob("*.json"))) < 3:
            assert process.poll() is None, process.communicate()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130 and "run the same command again to resume" in err
        progress = json.loads((store / "state" / "ingest-namus" / "progress.json").read_text())
        stored = {p.stem for p in (store / "cases" / "namus").glob("*.json")}
        done = set(progress["done"])
        # Nothing finished is forgotten (the signal may land between writing a case and
        # noting it done: that one case is then found stored on resume).
        assert done <= stored and len(stored - done) <= 1 and len(done) >= 3
        assert progress["summary"]["new"] == len(done)


def test_cli_refuses_a_base_url_that_is_not_http(tmp_path):
    process = run_cli("namus", "--base-url", "ftp://example.org", "--store", str(tmp_path))
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "is not an http(s) URL" in err


def test_partial_listing_skips_the_vanished_check_and_total_failure_stops(tmp_path, face_photos):
    data = write_fixture_cases(tmp_path / "data", "namus", namus_cases(face_photos, 4), states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        ingest("namus", server, store)
        remove_fixture_case(data, "namus", 1000)  # vanished from Vermont
        original_route = server.httpd.RequestHandlerClass._namus_search

        def ohio_search_fails(handler, body):
            if b"Ohio" in body:
                return handler._json(503, {"message": "Service Unavailable"})
            return original_route(handler, body)

        server.httpd.RequestHandlerClass._namus_search = ohio_search_fails
        partial = ingest("namus", server, store)
        assert list(partial.listing_errors) == ["Ohio"] and "listing was incomplete" in partial.vanished_check
        assert not partial.removed and store.get_case("namus", "MP1000").active  # not judged on half a listing
        assert store.read_json("state/ingest-namus/listing.json") is not None  # a rerun lists Ohio again

        server.httpd.RequestHandlerClass._namus_search = lambda handler, body: handler._json(503, {})
        client = PoliteClient(500, backoff_base=0.01, max_attempts=1, allow_loopback=True)
        with pytest.raises(SourceDown, match="every listing request failed"):
            Ingest(make_adapter("namus", server.url, client=client), LocalStore(tmp_path / "other")).run()


def test_all_photo_categories_flag(tmp_path, face_photos):
    case = namus_cases(face_photos, 1)[0]
    case.photos = [FixturePhoto(face_photos[0]), FixturePhoto(face_photos[1], category="Other")]
    data = write_fixture_cases(tmp_path / "data", "namus", [case], states=STATES)
    with SourceServer("namus", data) as server:
        for flag, expected in (([], ["FacialCaseId"]), (["--all-photo-categories"], ["FacialCaseId", "Other"])):
            store = tmp_path / f"store{len(flag)}"
            process = run_cli("namus", "--base-url", server.url, "--store", str(store), "--rate-limit", "200", *flag)
            assert process.wait(timeout=60) == 0, process.communicate()
            assert [p.category for p in LocalStore(store).get_case("namus", "MP1000").photos] == expected


def test_a_case_listed_in_two_states_is_ingested_once_with_both():
    row = {"case_id": "MP7", "modified": "2026-01-01T00:00:00Z"}
    listing = {
        "scopes": ["Ohio", "Utah"],
        "pages": {"Ohio": [{**row, "scope": "Ohio"}], "Utah": [{**row, "scope": "Utah"}]},
    }
    cases = Ingest._merge(listing)
    assert list(cases) == ["MP7"] and cases["MP7"][1] == ["Ohio", "Utah"]


def test_states_run_judges_only_its_own_states(tmp_path, face_photos):
    cases = namus_cases(face_photos, 4)  # 1000, 1002 in Vermont; 1001, 1003 in Ohio
    data = write_fixture_cases(tmp_path / "data", "namus", cases, states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data) as server:
        ingest("namus", server, store)
        remove_fixture_case(data, "namus", 1000)
        remove_fixture_case(data, "namus", 1001)
        vermont = ingest("namus", server, store, scopes=["VT"])
    assert dict(vermont.removed) == {"no longer listed": 1}
    assert sorted(c.record.case_id for c in store.iter_cases()) == ["MP1001", "MP1002", "MP1003"]


def test_namus_search_without_ordering_and_with_a_shifting_index(tmp_path):
    data = write_fixture_cases(tmp_path / "data", "namus", made_up_cases(5, states=("Vermont",)), states=["Vermont"])
    with SourceServer("namus", data) as server:
        adapter = make_adapter("namus", server.url, rate_limit=500, allow_loopback=True)
        adapter.page_size = 2
        adapter.order = [{"field": "undocumentedField", "direction": "Ascending"}]  # the server answers 400
        assert len(list(adapter.list_scope("Vermont"))) == 5 and adapter.order is None

        handler = server.httpd.RequestHandlerClass
        honest = handler._namus_search

        def one_more_than_served(self, body):
            status, payload, content_type = honest(self, body)
            page = json.loads(payload)
            page["count"] += 1
            return status, json.dumps(page).encode(), content_type

        handler._namus_search = one_more_than_served
        assert len(list(adapter.list_scope("Vermont"))) == 5  # what was listed is still used
        assert adapter.incomplete == {"Vermont": "5 distinct cases of 6 reported, twice"}


def test_a_404_case_that_comes_back_resolved_is_recorded_as_resolved(tmp_path, face_photos):
    cases = namus_cases(face_photos, 1)
    data = write_fixture_cases(tmp_path / "data", "namus", cases, states=STATES)
    store = LocalStore(tmp_path / "store")
    with SourceServer("namus", data, faults="gone=1000") as server:
        ingest("namus", server, store)
        cases[0].modified = "2026-05-01T00:00:00"
        write_fixture_cases(data, "namus", cases)
        assert store.get_case("namus", "MP1000") is None  # never stored: nothing to remove
        server.faults.gone = frozenset()
        ingest("namus", server, store)
        cases[0].resolved, cases[0].modified = True, "2026-06-01T00:00:00"
        write_fixture_cases(data, "namus", cases)
        server.faults.gone = frozenset({"1000"})
        assert dict(ingest("namus", server, store).removed) == {"not found": 1}
        server.faults.gone = frozenset()
        summary = ingest("namus", server, store)
        assert not summary.removed  # already out of the gallery: not counted twice
        case = store.get_case("namus", "MP1000")
        assert case.removed_reason == "resolved" and case.record.resolved
        server.requests.clear()
        assert ingest("namus", server, store).unchanged == 1 and len(case_requests(server)) == 0
