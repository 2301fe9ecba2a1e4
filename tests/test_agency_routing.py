"""The case's investigating agency as a recipient: kept from NamUs's real case JSON
(../shared/data/sources) through the ingest store, never in the devices' person table,
and told as a responder when a site opts in. Case details come from the real NamUs
adapter talking to the NamUs dev server, which serves the real case bodies as they are
(hostile variants are made from them at test time). Messages land in the local SMS and
e-mail sinks, and in moto's SNS and SES."""

from __future__ import annotations

import copy
import email
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from edge_app.gallery.bundle import PersonRow
from sync_service.alerts.cases import details_from_record
from sync_service.alerts.config import AlertSettings, Sites
from sync_service.alerts.handler import AlertService, build_service
from sync_service.alerts.local import create_aws_resources
from sync_service.alerts.stores import read_sms_sink
from sync_service.dev_servers.fixtures import write_fixture_cases
from sync_service.dev_servers.server import Faults, SourceServer
from sync_service.gallery.nightly import person_row
from sync_service.http import ALLOW_LOOPBACK_ENV
from sync_service.sources.contacts import email_address, phone_e164
from sync_service.sources.namus import parse_case
from sync_service.store import LocalStore, StoredCase
from tests.test_alert_handler import GALLERY_VERSION, make_event, rule_event, write_gallery

REAL_CASES = "namus_MissingPersons_VirginIslands_2025-09-20.json"
REVIEWER, RESPONDER = "+15555550111", "+15555550121"
MAIL_FROM = "alerts@example.org"
# MP71320's agency (real NamUs data: a federal agency's public desk line and address).
NPS_PHONE, NPS_MAIL = "+12023794761", "nps_isb@nps.gov"
VIPD_PHONE = "+13407725605"  # the Virgin Islands Police Department, MP17287's primary agency


def real_cases(sources_dir: Path) -> dict[str, dict]:
    return json.loads((sources_dir / REAL_CASES).read_text())


# --- the source: what is kept, what is refused ---------------------------------------------


def test_real_namus_cases_keep_their_investigating_agencies_with_e164_numbers(sources_dir):
    cases = real_cases(sources_dir)
    for key, body in cases.items():
        record = parse_case(body)
        assert record.agencies, key  # every real case names one
        for agency in record.agencies:
            assert agency.name and agency.phone and agency.phone.startswith("+1") and len(agency.phone) == 12
        assert sum(a.primary for a in record.agencies) == 1, key
    nps = parse_case(cases["71320"]).agencies
    assert [(a.name, a.phone, a.email) for a in nps] == [
        ("National Park Service Investigative Services Branch", NPS_PHONE, NPS_MAIL)
    ]
    # Two agencies: the medical examiner and the police, which NamUs names primary.
    two = parse_case(cases["17287"]).agencies
    assert [(a.phone, a.primary) for a in two] == [("+13407745666", False), (VIPD_PHONE, True)]
    # Only properties.agency (as the case entered it) carries a number: that one is kept.
    assert parse_case(cases["5504"]).agencies[0].phone == "+13407155507"
    # The older (2019) shape: one agency, no primary named.
    older = parse_case(json.loads((sources_dir / "namus_case_fixture_MP9564_meddulla-facematch.json").read_text()))
    assert [(a.name, a.phone, a.primary) for a in older.agencies] == [("San Diego Police Dept.", "+16195312277", False)]


HOSTILE_PHONES = [
    "911",  # a short code
    "1-900-555-0199",  # premium rate: texting it costs money
    "+44 20 7946 0958",  # a London landline: cannot take an SMS
    "202-379-4761 ext. 12",  # an extension cannot be texted
    "5555550123",  # an unassigned range
    "2023794761\n+15555550000",  # two numbers, one injected
    "+1 202 379 4761 " + "9" * 40,
    12023794761,  # not text at all
]
HOSTILE_MAILS = [
    "nps_isb@nps.gov\nBcc: everyone@example.org",
    "NPS <nps_isb@nps.gov>",
    '"nps isb"@nps.gov',
    "nps_isb@[127.0.0.1]",
    "nps_isb@nps.gov, other@example.org",
    "nps_isb",
    "ünï@nps.gov",
]


@pytest.mark.parametrize("phone", HOSTILE_PHONES)
def test_a_number_that_cannot_be_texted_safely_is_refused(phone):
    assert phone_e164(phone, "US") is None


@pytest.mark.parametrize("address", HOSTILE_MAILS)
def test_an_address_that_is_not_a_plain_mailbox_is_refused(address):
    assert email_address(address) is None


def test_national_numbers_are_normalised_to_e164():
    assert phone_e164("(202) 379-4761", "US") == NPS_PHONE
    assert phone_e164("340.772.5605", "US") == VIPD_PHONE
    assert phone_e164("+1 202 379 4761", "US") == NPS_PHONE
    assert email_address("  NPS_ISB@nps.gov ") == "NPS_ISB@nps.gov"


def hostile_body(body: dict, phone: Any, mail: Any, name: str) -> dict:
    body = copy.deepcopy(body)
    agency = body["investigatingAgencies"][0]
    agency["name"] = name
    agency["selection"]["agency"].update(phone=phone, email=mail, name=name)
    return body


def test_hostile_contacts_are_dropped_and_the_case_still_parses(sources_dir):
    real = real_cases(sources_dir)["71320"]
    name = "Call\u202e now http://evil.example/x\r\nor www.evil.example NPS"
    for phone, mail in zip(HOSTILE_PHONES, HOSTILE_MAILS, strict=False):
        record = parse_case(hostile_body(real, phone, mail, name))
        (agency,) = record.agencies
        assert agency.phone is None and agency.email is None, (phone, mail)
        # On its way to a person, the name is cleaned like every other source field.
        (shown,) = details_from_record(record, "namus", "MP71320").agencies
        assert shown.name == "Call now or NPS"


def test_the_stored_case_keeps_the_agency_and_the_devices_person_table_does_not(sources_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    record = parse_case(real_cases(sources_dir)["71320"])
    store.put_case(StoredCase(record=record))

    stored = store.get_case("namus", "MP71320")
    assert stored.record.agencies == record.agencies and stored.record.agencies[0].email == NPS_MAIL
    row = person_row(stored)
    assert set(row.model_dump()) == set(PersonRow.model_fields) == {"person_id", "display_name", "source", "case_id"}
    assert NPS_PHONE[2:] not in row.model_dump_json() and "nps" not in row.model_dump_json().lower()


# --- routing ---------------------------------------------------------------------------------


def sites(mode: str, **north: Any) -> Sites:
    return Sites.model_validate(
        {
            "sites": {
                "north": {"name": "North trailhead", "review": mode, "notify_case_agency": True,
                          "reviewers": [{"phone": REVIEWER}], "responders": [{"phone": RESPONDER}]} | north,
                "south": {"name": "South gate", "review": mode,
                          "reviewers": [{"phone": REVIEWER}], "responders": [{"phone": RESPONDER}]},
            },
            "devices": {
                "dev-north": {"name": "North trailhead", "site": "north", "cameras": {"cam0": "Gate camera"}},
                "dev-south": {"name": "South gate", "site": "south", "cameras": {"cam0": "Gate camera"}},
            },
        }
    )  # fmt: skip


class NamusDev:
    """The NamUs dev server serving real case bodies (copied into a temporary folder)."""

    def __init__(self, data: Path, bodies: dict[str, dict]) -> None:
        write_fixture_cases(data, "namus", [], states=["Virgin Islands"])
        self.data = data
        self.serve(bodies)
        self.server = SourceServer("namus", data).start()
        self.url = self.server.url

    def serve(self, bodies: dict[str, dict]) -> None:
        (self.data / "cases").mkdir(exist_ok=True)
        for key, body in bodies.items():
            (self.data / "cases" / f"{key}.json").write_text(json.dumps(body))

    def down(self, down: bool) -> None:
        self.server.faults = Faults.parse("5xx=1000" if down else "")


@pytest.fixture()
def namus_real(sources_dir, tmp_path, monkeypatch) -> Iterator[NamusDev]:
    monkeypatch.setenv(ALLOW_LOOPBACK_ENV, "1")  # the explicit opt-in for a source on 127.0.0.1
    cases = real_cases(sources_dir)
    server = NamusDev(tmp_path / "namus", {key: cases[key] for key in ("71320", "17287")})
    yield server
    server.server.stop()


class World:
    """The alert service with review on one backend, its store and gallery, and its sinks."""

    def __init__(self, backend: str, root: Path, namus: NamusDev, sites: Sites, sources_dir: Path, moto=None) -> None:
        rows = [
            PersonRow(person_id=f"namus:MP{n}", display_name=f"Person {n}", source="namus", case_id=f"MP{n}")
            for n in ("71320", "17287")
        ]
        store = LocalStore(root / "store")
        for key in ("71320", "17287"):  # what the nightly ingest keeps
            store.put_case(StoredCase(record=parse_case(real_cases(sources_dir)[key])))
        common = {
            "sites": sites,
            "gallery_url": str(write_gallery(root / "gallery", GALLERY_VERSION, rows)),
            "store_url": str(store.root),
            "source_urls": {"namus": namus.url},
            "review_url": "https://review.example.org",
            "mail_from": MAIL_FROM,
        }
        self.backend, self.moto = backend, moto
        if backend == "local":
            self.settings = AlertSettings(backend="local", local_dir=root / "cloud", **common)
        else:
            self.settings = AlertSettings(backend="aws", crop_bucket="mpd-review-crops", **common)
            create_aws_resources(self.settings)

    def service(self, **changes: Any) -> AlertService:
        return build_service(self.settings.model_copy(update=changes), fetch=True)

    def sms(self) -> list[dict]:
        return read_sms_sink(self.settings.sms_sink) if self.backend == "local" else self.moto.sent_sms()

    def sms_to(self, number: str) -> list[str]:
        return [m["message"] for m in self.sms() if m["phone_number"] == number]

    def mail_to(self, address: str) -> list[email.message.Message]:
        if self.backend == "local":
            folder = self.settings.local_dir / "mail"
            raw = [p.read_bytes() for p in sorted(folder.glob("*.eml"))] if folder.exists() else []
        else:
            data = requests.get(f"{self.moto.url}/moto-api/data.json", timeout=10).json()
            raw = [m["raw_data"].encode() for m in data.get("ses", {}).get("RawMessage", [])]
        return [m for m in map(email.message_from_bytes, raw) if m["To"] == address]


@pytest.fixture(params=["local", "aws"])
def world(request, tmp_path, namus_real, sources_dir):
    def make(mode: str = "before", **north: Any) -> World:
        moto = request.getfixturevalue("aws") if request.param == "aws" else None
        return World(request.param, tmp_path, namus_real, sites(mode, **north), sources_dir, moto)

    return make


def event(case: str = "MP71320", device: str = "dev-north"):
    return rule_event(make_event(person_id=f"namus:{case}", case_id=case, device_id=device, display_name="x"))


def test_before_mode_tells_the_agency_only_after_a_confirmation_by_sms_and_email(world):
    world = world("before")
    service = world.service()
    result = service.handle(event())
    assert result["decision"] == "review_pending"
    assert world.sms_to(NPS_PHONE) == [] and world.mail_to(NPS_MAIL) == []
    record = service.review.reviews.get(result["review_id"])
    assert record.details_fresh and [a.phone for a in record.agencies] == [NPS_PHONE]

    outcome = service.review.decide(result["review_id"], "alice", confirm=True)

    assert {NPS_PHONE, NPS_MAIL, RESPONDER} <= set(outcome.sent)
    (sms,) = world.sms_to(NPS_PHONE)
    assert sms == world.sms_to(RESPONDER)[0]  # the responders' message, nothing more
    assert sms.startswith("CONFIRMED BY REVIEWER: MISSING PERSON SEEN:") and "NamUs MP71320" in sms
    (mail,) = world.mail_to(NPS_MAIL)
    assert "NamUs MP71320" in mail.get_payload(decode=True).decode()
    assert not [part for part in mail.walk() if part.get_content_maintype() == "image"]  # no face crop


def test_a_site_that_did_not_opt_in_never_tells_the_agency(world):
    world = world("before")
    service = world.service()
    result = service.handle(event(device="dev-south"))
    service.review.decide(result["review_id"], "alice", confirm=True)
    assert len(world.sms_to(RESPONDER)) == 1
    assert world.sms_to(NPS_PHONE) == [] and world.mail_to(NPS_MAIL) == []


def test_after_mode_tells_the_agency_at_once_and_follows_up_a_dismissal(world):
    world = world("after", case_agency_channels=["sms"])
    service = world.service()
    result = service.handle(event("MP17287"))  # two agencies: only the primary one is told
    assert result["decision"] == "sent"
    (alert,) = world.sms_to(VIPD_PHONE)
    assert alert.startswith("MISSING PERSON SEEN:") and world.sms_to("+13407745666") == []

    service.review.decide(result["review_id"], "alice", confirm=False)

    followup = world.sms_to(VIPD_PHONE)[1]
    assert followup.startswith("DISREGARD the alert of") and "NamUs MP17287" in followup
    assert world.mail_to(NPS_MAIL) == []


def test_source_down_the_agency_comes_from_the_stored_case(world, namus_real):
    world = world("before", case_agency_channels=["email"])
    namus_real.down(True)
    service = world.service()
    result = service.handle(event())
    record = service.review.reviews.get(result["review_id"])
    assert not record.details_fresh and record.agencies[0].email == NPS_MAIL

    service.review.decide(result["review_id"], "alice", confirm=True)

    assert len(world.mail_to(NPS_MAIL)) == 1
    assert world.sms_to(NPS_PHONE) == []  # the site's channels: e-mail only


def test_a_hostile_agency_contact_from_the_source_reaches_no_one(world, namus_real, sources_dir):
    real = real_cases(sources_dir)["71320"]
    namus_real.serve({"71320": hostile_body(real, "1-900-555-0199", "x@nps.gov\nBcc: all@example.org",
                                            "NPS https://evil.example/pay \u202eNOW")})  # fmt: skip
    world = world("before")
    service = world.service()
    result = service.handle(event())
    record = service.review.reviews.get(result["review_id"])
    assert [(a.name, a.phone, a.email) for a in record.agencies] == [("NPS NOW", None, None)]

    outcome = service.review.decide(result["review_id"], "alice", confirm=True)

    assert set(outcome.sent) == {RESPONDER}
    assert [m["phone_number"] for m in world.sms() if m["phone_number"] != REVIEWER] == [RESPONDER]
