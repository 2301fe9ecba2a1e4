"""The dev source servers: same endpoints and JSON shapes as the real APIs, and every fault."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

from sync_service.dev_servers.fixtures import FixtureCase, FixturePhoto, remove_fixture_case, write_fixture_cases
from sync_service.dev_servers.server import Faults, SourceServer
from sync_service.sources.fbi import parse_item
from sync_service.sources.interpol import parse_list_page, parse_notice
from sync_service.sources.namus import parse_case

NAMUS = "http://{}/api/CaseSets/NamUs"


def synthetic_jpeg(size: int = 96, shade: int = 0) -> bytes:
    """A made-up picture for tests of transport and storage (no face needed there)."""
    buffer = io.BytesIO()
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    Image.eval(image, lambda v: (v + shade) % 256).save(buffer, "JPEG")
    return buffer.getvalue()


def made_up_cases(count: int, states=("Vermont", "Ohio"), start: int = 500) -> list[FixtureCase]:
    return [
        FixtureCase(
            case_id=start + i,
            first_name=f"Person{i}",
            last_name="Madeup",
            sex="Male" if i % 2 else "Female",
            age_now=30 + i,
            age_when_missing=20,
            state=states[i % len(states)],
            modified=f"2026-01-{1 + i % 28:02d}T10:00:00.000",
            namus_shape="flat" if i % 3 == 2 else "2025",
            photos=[FixturePhoto(synthetic_jpeg(shade=i), mime_type="image/pjpeg")],
        )
        for i in range(count)
    ]


@pytest.fixture()
def namus_data(tmp_path):
    return write_fixture_cases(tmp_path / "namus", "namus", made_up_cases(7), states=["Vermont", "Ohio", "Guam"])


def test_namus_endpoints_and_shapes(namus_data):
    with SourceServer("namus", namus_data) as server:
        host = server.url.removeprefix("http://")
        states = requests.get(NAMUS.format(host) + "/States", timeout=5).json()
        assert [(s["name"], s["displayName"]) for s in states] == [("Guam", "GU"), ("Ohio", "OH"), ("Vermont", "VT")]
        search = NAMUS.format(host) + "/MissingPersons/Search"
        body = {
            "take": 3,
            "skip": 0,
            "projections": ["namus2Number", "modifiedDateTime"],
            "predicates": [{"field": "stateOfLastContact", "operator": "IsIn", "values": ["Vermont"]}],
        }
        first = requests.post(search, json=body, timeout=5).json()
        second = requests.post(search, json={**body, "skip": 3}, timeout=5).json()
        assert first["count"] == 4 and len(first["results"]) == 3 and len(second["results"]) == 1
        row = first["results"][0]
        assert set(row) == {"namus2Number", "modifiedDateTime", "link", "image"}
        assert row["link"] == f"/MissingPersons/Case#/{row['namus2Number']}"
        bad = requests.post(search, json={**body, "projections": ["namus2Number", "shoeSize"]}, timeout=5)
        assert bad.status_code == 400 and 'Invalid field name "shoeSize"' in bad.json()["message"]
        other_operator = {**body, "predicates": [{**body["predicates"][0], "operator": "IsEqualTo"}]}
        assert requests.post(search, json=other_operator, timeout=5).status_code == 500

        case = requests.get(f"{NAMUS.format(host)}/MissingPersons/Cases/500", timeout=5).json()
        record = parse_case(case, server.url)
        assert record.case_id == "MP500" and record.photos
        photo = requests.get(record.photos[0].url, timeout=5)
        assert photo.headers["Content-Type"] == "image/pjpeg" and photo.content == synthetic_jpeg(shade=0)
        assert requests.get(f"{NAMUS.format(host)}/MissingPersons/Cases/999", timeout=5).status_code == 404
        remove_fixture_case(namus_data, "namus", 500)  # data is re-read per request
        assert requests.get(f"{NAMUS.format(host)}/MissingPersons/Cases/500", timeout=5).status_code == 404


def test_fbi_endpoints_and_shapes(tmp_path):
    cases = [
        FixtureCase(case_id=f"uid{i:04d}", first_name="A", last_name=f"B{i}", photos=[synthetic_jpeg()])
        for i in range(60)
    ]
    data = write_fixture_cases(tmp_path, "fbi", cases)
    with SourceServer("fbi", data) as server:
        page1 = requests.get(f"{server.url}/wanted/v1/list?page=1&pageSize=100", timeout=5).json()
        assert page1["total"] == 60 and len(page1["items"]) == 50  # pageSize capped at 50
        page2 = requests.get(f"{server.url}/wanted/v1/list?page=2&pageSize=50", timeout=5).json()
        assert len(page2["items"]) == 10
        assert requests.get(f"{server.url}/wanted/v1/list?page=3&pageSize=50", timeout=5).json()["items"] == []
        item = requests.get(f"{server.url}/@wanted-person/uid0001", timeout=5).json()
        record = parse_item(item)
        assert record.photos[0].url.startswith(server.url)  # {{BASE}} replaced by the server's address
        assert requests.get(record.photos[0].url, timeout=5).content == synthetic_jpeg()


def test_interpol_endpoints_window_and_filters(tmp_path):
    cases = [
        FixtureCase(case_id=f"2025-{i}", first_name="A", last_name=f"B{i}", sex="Female" if i % 2 else "Male",
                    age_now=10 + i % 50, photos=[synthetic_jpeg()] if i < 3 else [])
        for i in range(200)
    ]  # fmt: skip
    data = write_fixture_cases(tmp_path, "interpol", cases)
    with SourceServer("interpol", data) as server:
        listing = requests.get(f"{server.url}/notices/v1/yellow?resultPerPage=160&page=1", timeout=5).json()
        total, summaries = parse_list_page(listing)
        assert total == 200 and len(summaries) == 160 and "next" not in listing["_links"]
        beyond = requests.get(f"{server.url}/notices/v1/yellow?resultPerPage=160&page=2", timeout=5).json()
        assert parse_list_page(beyond)[1] == []  # the 160-result window
        women = requests.get(f"{server.url}/notices/v1/yellow?sexId=F&resultPerPage=160", timeout=5).json()
        assert women["total"] == 100
        detail = requests.get(f"{server.url}/notices/v1/yellow/2025-1", timeout=5).json()
        assert "_pictures" not in detail and parse_notice(detail, []).case_id == "2025-1"
        images = requests.get(f"{server.url}/notices/v1/yellow/2025-1/images", timeout=5).json()
        href = images["_embedded"]["images"][0]["_links"]["self"]["href"]
        assert requests.get(href, timeout=5).content == synthetic_jpeg()


def test_resolved_interpol_notice_is_withdrawn(tmp_path):
    case = FixtureCase(case_id="2025-7", first_name="A", last_name="B")
    write_fixture_cases(tmp_path, "interpol", [case])
    case.resolved = True
    write_fixture_cases(tmp_path, "interpol", [case])
    assert not (tmp_path / "notices" / "2025-7.json").exists()


# --- faults --------------------------------------------------------------------------------


def get(url: str) -> requests.Response:
    return requests.get(url, timeout=10)


def test_fault_5xx_burst_then_success(namus_data):
    with SourceServer("namus", namus_data, faults="5xx=2") as server:
        url = NAMUS.format(server.url[7:]) + "/States"
        assert [get(url).status_code for _ in range(3)] == [503, 503, 200]


def test_fault_429_with_retry_after(namus_data):
    with SourceServer("namus", namus_data, faults="429=1:7") as server:
        first = get(NAMUS.format(server.url[7:]) + "/States")
        assert first.status_code == 429 and first.headers["Retry-After"] == "7"
        assert get(NAMUS.format(server.url[7:]) + "/States").status_code == 200


def test_fault_slow_only_first_time(namus_data):
    with SourceServer("namus", namus_data, faults="slow=0.4:1") as server:
        url = NAMUS.format(server.url[7:]) + "/States"
        started = time.monotonic()
        get(url)
        slow = time.monotonic() - started
        started = time.monotonic()
        get(url)
        assert slow >= 0.4 and time.monotonic() - started < slow


def test_fault_malformed_and_gone_cases(namus_data):
    with SourceServer("namus", namus_data, faults="malformed=501,gone=502") as server:
        cases = NAMUS.format(server.url[7:]) + "/MissingPersons/Cases"
        with pytest.raises(json.JSONDecodeError):
            json.loads(get(f"{cases}/501").content)
        assert get(f"{cases}/502").status_code == 404
        assert get(f"{cases}/503").json()["id"] == 503


def test_fault_truncated_and_non_image_photos(namus_data):
    with SourceServer("namus", namus_data, faults="truncated=5000,nonimage=503/5030") as server:
        cases = NAMUS.format(server.url[7:]) + "/MissingPersons/Cases"
        whole = synthetic_jpeg(shade=0)
        truncated = get(f"{cases}/500/Images/5000/Original")
        assert truncated.status_code == 200 and truncated.content == whole[: len(whole) // 2]
        html = get(f"{cases}/503/Images/5030/Original")
        assert html.headers["Content-Type"] == "image/jpeg" and html.content.startswith(b"<!DOCTYPE html>")
        assert get(f"{cases}/501/Images/5010/Original").content == synthetic_jpeg(shade=1)


def test_bad_fault_spec_is_explained():
    with pytest.raises(ValueError, match="unknown fault 'explode'"):
        Faults.parse("5xx=1,explode=3")
    with pytest.raises(ValueError, match="bad fault '429=x'"):
        Faults.parse("429=x")


def test_cli_serves_and_reports_its_address(namus_data):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mpd_cli",
            "dev",
            "source-server",
            "namus",
            "--data",
            str(namus_data),
            "--faults",
            "5xx=1",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        assert line.startswith("namus dev server listening on http://127.0.0.1:")
        url = line.split()[-1]
        assert get(NAMUS.format(url[7:]) + "/States").status_code == 503
        assert len(get(NAMUS.format(url[7:]) + "/States").json()) == 3
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cli_refuses_bad_faults(namus_data):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mpd_cli",
            "dev",
            "source-server",
            "namus",
            "--data",
            str(namus_data),
            "--faults",
            "nope",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown fault 'nope'" in result.stderr


def test_namus_states_default_to_those_of_the_cases(tmp_path):
    data = write_fixture_cases(tmp_path, "namus", made_up_cases(3, states=("Guam", "Utah")))
    (data / "states.json").unlink()
    with SourceServer("namus", data) as server:
        states = get(NAMUS.format(server.url[7:]) + "/States").json()
    assert [s["name"] for s in states] == ["Guam", "Utah"]
