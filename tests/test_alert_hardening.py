"""The alert path against a compromised or broken device (issue 13, rows 3, 4 and 12):
each test replays the attack that worked before and shows what happens now."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from edge_app.gallery.bundle import PersonRow
from edge_app.match_event import MatchEvent
from sync_service.alerts.galleries import canonical_case_id
from sync_service.alerts.sms import clean_text
from tests.servers import free_port
from tests.test_alert_handler import (  # noqa: F401  (fixtures)
    SEEN,
    aws_alerts,
    backend,
    gallery_root,
    make_event,
    namus,
    rule_event,
    write_gallery,
)

HOSTILE = "Dana\nCALL +15550000000 NOW https://evil.example/x \u202eTXET\x07"


# --- row 3: SMS text comes from cloud-side data only ------------------------------------


@pytest.mark.parametrize("source_up", [True, False], ids=["fresh lookup", "source down"])
def test_device_strings_never_reach_the_sms(source_up, backend, namus):  # noqa: F811
    namus.mode = "ok"
    urls = {"namus": namus.url if source_up else f"http://127.0.0.1:{free_port()}"}
    service = backend.service(source_urls=urls, case_lookup_timeout=0.5)
    event = make_event(display_name=HOSTILE, camera_id="cam9\nhttps://evil.example", case_id=" mp990001")

    assert service.handle(rule_event(event))["decision"] == "sent"

    (sms,) = backend.sms()
    text = sms["message"]
    assert "evil" not in text and "CALL" not in text and "\n" not in text and "\u202e" not in text
    # The name is the source's (fresh) or the gallery's the cloud built, never the device's.
    assert text.startswith("MISSING PERSON SEEN: Dana Example")
    assert "NamUs MP990001" in text  # the canonical id, not the device's spelling
    assert "at camera, North trailhead." in text  # cam9 is not in the site table
    links = [word for word in text.split() if "://" in word]
    assert all(link.startswith(("https://www.namus.gov/", "http://127.0.0.1:8080/r/")) for link in links), links


def test_outside_text_is_cleaned_before_it_reaches_a_person():
    assert clean_text("Ann\r\nSmith\x1b[31m visit www.evil.example or https://evil.example now") == (
        "Ann Smith [31m visit or now"
    )
    assert clean_text("\u202egnp.exe\u2066x") == "gnp.exe x"
    assert len(clean_text("x" * 500, 80)) == 80


# --- row 4: one case, however it is spelled; a budget per device; the gallery decides ----


def test_canonical_case_ids():
    for spelling in ("MP990010", "mp990010", "MP0990010", "990010", " MP990010", "Mp990010 "):
        assert canonical_case_id("namus", spelling) == "MP990010"
    assert canonical_case_id("interpol", "2021/75051") == canonical_case_id("interpol", "2021-75051")
    assert canonical_case_id("fbi", "ABC123def") == "abc123def"
    for source, bad in (("namus", "MP99x"), ("namus", "https://x"), ("fbi", "a/b"), ("other", "a b")):
        with pytest.raises(ValueError):
            canonical_case_id(source, bad)


def test_respelling_the_case_id_does_not_dodge_the_cooldown(backend):  # noqa: F811
    service = backend.service()
    spellings = ["MP990001", "mp990001", "MP0990001", "990001", " MP990001", "MP990001 "]
    decisions = [service.handle(rule_event(make_event(case_id=spelling)))["decision"] for spelling in spellings]
    assert decisions == ["sent"] + ["cooldown"] * 5
    assert len(backend.sms()) == 1


def test_a_device_over_its_hourly_budget_texts_nobody_more(backend, tmp_path):  # noqa: F811
    rows = [
        PersonRow(person_id=f"namus:MP99000{i}", display_name=f"Person {i}", source="namus", case_id=f"MP99000{i}")
        for i in range(1, 5)
    ]
    gallery = write_gallery(tmp_path / "gallery", rows=rows)
    service = backend.service(gallery_url=str(gallery), device_alerts_per_hour=2, fetch=None)
    results = [
        service.handle(rule_event(make_event(person_id=row.person_id, case_id=row.case_id)))["decision"] for row in rows
    ]
    assert results == ["sent", "sent", "rate_limited", "rate_limited"]
    assert len(backend.sms()) == 2
    # Nothing is lost: the rate-limited alerts wait on the review page.
    page = service.review.reviews.page(["north"], None, 10)
    assert sum(record.rate_limited for record in page) == 2


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"person_id": "namus:MP123456", "case_id": "MP123456"}, "is not in gallery version"),
        ({"case_id": "MP990002"}, "not namus MP990002"),  # a person in the gallery, another case
        ({"source": "fbi", "case_id": "abc"}, "not fbi abc"),
        ({"gallery_version": "1999-01-01"}, "was not published"),
        ({"gallery_version": "../../etc"}, "not a version name"),
    ],
)
def test_an_event_about_a_case_not_in_its_gallery_version_is_rejected(changes, reason, aws_alerts):  # noqa: F811
    result = aws_alerts.service().handle(rule_event(make_event(**changes)))
    assert result["decision"] == "rejected" and reason in result["reason"]
    assert aws_alerts.sms() == []


# --- row 12: impossible events ---------------------------------------------------------------


def _raw(**changes) -> bytes:
    data = json.loads(make_event().to_json())
    data.update({k: v.isoformat() if isinstance(v, datetime) else v for k, v in changes.items()})
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"best_similarity": -1.0, "mean_similarity": -1.0, "threshold": 0.99}, "below the threshold"),
        ({"threshold": 0.05, "best_similarity": 0.1, "mean_similarity": 0.1}, "below 0.3"),
        ({"mean_similarity": 0.9}, "mean_similarity is above best_similarity"),
        ({"first_seen": SEEN + timedelta(days=3650), "last_seen": SEEN + timedelta(days=3650)}, "ahead of the receive"),
        (
            {"first_seen": datetime(2000, 1, 1, tzinfo=UTC), "last_seen": datetime(2000, 1, 1, tzinfo=UTC)},
            "days before",
        ),
        ({"last_seen": datetime(2000, 1, 1, tzinfo=UTC)}, "first_seen is after last_seen"),
        ({"first_seen": SEEN - timedelta(days=2)}, "spans more than"),
    ],
)
def test_impossible_events_are_rejected_with_a_reason(changes, reason, aws_alerts):  # noqa: F811
    result = aws_alerts.service().handle(rule_event(_raw(**changes)))
    assert result["decision"] == "rejected" and reason in result["reason"], result
    assert aws_alerts.sms() == []


def test_the_receive_time_is_the_rules_not_the_devices(aws_alerts):  # noqa: F811
    """An event whose clock runs ten years ahead is judged against IoT's receive time."""
    event = make_event(first_seen=SEEN + timedelta(days=3650), last_seen=SEEN + timedelta(days=3650))
    envelope = rule_event(event) | {"received_ms": int(SEEN.timestamp() * 1000)}
    assert "ahead of the receive time" in aws_alerts.service().handle(envelope)["reason"]


def test_an_honest_device_event_passes_the_bounds():
    event = make_event(best_similarity=0.5, mean_similarity=0.49, threshold=0.51)  # within the rounding slack
    assert event.implausibility(SEEN + timedelta(seconds=3)) is None
    assert MatchEvent.from_json(event.to_json()) == event


def test_a_scoped_gallery_version_is_found_under_its_scope(aws_alerts, tmp_path):  # noqa: F811
    root = write_gallery(tmp_path / "build-gallery", version="20261127T030000Z")
    write_gallery(root / "scopes" / "texas", version="20261128T030000Z")
    service = aws_alerts.service(gallery_url=str(root))
    assert service.handle(rule_event(make_event(gallery_version="20261128T030000Z")))["decision"] == "sent"
    other = service.handle(rule_event(make_event(gallery_version="20261129T030000Z")))
    assert other["decision"] == "rejected" and "was not published" in other["reason"]
