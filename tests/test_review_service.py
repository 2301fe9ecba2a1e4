"""Review records and routing per site, on both backends (moto in server mode, and the
embedded SQLite + SMS file): review before / after, decisions under concurrency,
suppression after a dismissal, escalation, expiry, crops encrypted at rest, e-mail
with the photos, templates per language, reviewer accounts (user file, Cognito on moto).

The case photo and the camera crop are cut from scikit-image's astronaut sample (a
public-domain NASA portrait), never a real missing person."""

from __future__ import annotations

import email
import io
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import requests
from PIL import Image

from sync_service.alerts.config import AlertSettings, Sites
from sync_service.alerts.handler import AlertService, build_service
from sync_service.alerts.local import create_aws_resources
from sync_service.alerts.sms import segment_count
from sync_service.alerts.stores import read_sms_sink
from sync_service.review.auth import AuthError, CognitoAuth, UserFile
from sync_service.review.records import Decided, State
from sync_service.sources.records import PersonRecord
from sync_service.store import LocalStore, StoredCase
from tests.test_alert_handler import Clock, gallery_root, make_event, rule_event  # noqa: F401  (fixtures)

REVIEWER = "+15555550111"
REVIEWER_MAIL = "reviewer@example.org"
SECOND = "+15555550112"
RESPONDER = "+15555550121"
RESPONDER_ES = "+15555550122"
MAIL_FROM = "alerts@example.org"


def review_sites(mode: str = "before", **site: Any) -> Sites:
    return Sites.model_validate(
        {
            "sites": {
                "north": {
                    "name": "North trailhead",
                    "review": mode,
                    "escalate_after_minutes": 10,
                    "suppress_after_dismissal_minutes": 60,
                    "reviewers": [{"phone": REVIEWER, "email": REVIEWER_MAIL}],
                    "second_reviewers": [{"phone": SECOND}],
                    "responders": [{"phone": RESPONDER}, {"phone": RESPONDER_ES, "language": "es"}],
                }
                | site,
                "south": {"name": "South gate", "review": mode, "responders": [{"phone": RESPONDER}]},
            },
            "devices": {
                "dev-north": {"name": "North trailhead", "site": "north", "cameras": {"cam0": "Gate camera"}},
                "dev-south": {"name": "South gate", "site": "south", "cameras": {"cam0": "Gate camera"}},
            },
        }
    )


def astronaut(size: int, quality: int = 80) -> bytes:
    from skimage import data

    image = Image.fromarray(data.astronaut()[20:230, 120:330]).resize((size, size))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def write_case_store(root: Path) -> Path:
    store = LocalStore(root)
    record = PersonRecord(source="namus", case_id="MP990001", name="Dana Example", sex="female")
    photo = store.put_photo("namus", "MP990001", "1", astronaut(256), category="FacialCaseId")
    store.put_case(StoredCase(record=record, photos=[photo]))
    return root


@pytest.fixture(scope="module")
def case_store(tmp_path_factory) -> Path:
    return write_case_store(tmp_path_factory.mktemp("store"))


CROP = None


def crop_b64() -> str:
    import base64

    global CROP
    if CROP is None:
        CROP = astronaut(96, 70)
        assert len(CROP) <= 8192
    return base64.b64encode(CROP).decode()


@dataclass
class World:
    """The alert service with review, on one backend, and what it sent."""

    name: str
    settings: AlertSettings
    sms: Any
    mail: Any

    def service(self, clock: Any = None, **changes: Any) -> AlertService:
        kwargs = {"clock": clock} if clock else {}
        return build_service(self.settings.model_copy(update=changes), fetch=None, **kwargs)

    def sms_to(self, number: str) -> list[str]:
        return [m["message"] for m in self.sms() if m["phone_number"] == number]


def local_world(tmp_path: Path, gallery: Path, store: Path, sites: Sites) -> World:
    settings = AlertSettings(
        backend="local",
        local_dir=tmp_path / "cloud",
        sites=sites,
        gallery_url=str(gallery),
        store_url=str(store),
        review_url="https://review.example.org",
    )

    def mail() -> list[email.message.Message]:
        folder = settings.local_dir / "mail"
        return (
            [email.message_from_bytes(p.read_bytes()) for p in sorted(folder.glob("*.eml"))] if folder.exists() else []
        )

    return World("local", settings, lambda: read_sms_sink(settings.sms_sink), mail)


def aws_world(moto_server, gallery: Path, store: Path, sites: Sites) -> World:
    settings = AlertSettings(
        backend="aws",
        sites=sites,
        gallery_url=str(gallery),
        store_url=str(store),
        review_url="https://review.example.org",
        crop_bucket="mpd-review-crops",
        mail_from=MAIL_FROM,
    )
    create_aws_resources(settings)

    def mail() -> list[email.message.Message]:
        data = requests.get(f"{moto_server.url}/moto-api/data.json", timeout=10).json()
        return [email.message_from_string(m["raw_data"]) for m in data.get("ses", {}).get("RawMessage", [])]

    return World("aws", settings, moto_server.sent_sms, mail)


@pytest.fixture(params=["aws", "local"])
def world_factory(request, tmp_path, gallery_root, case_store):  # noqa: F811
    def make(mode: str = "before", **site: Any) -> World:
        sites = review_sites(mode, **site)
        if request.param == "local":
            return local_world(tmp_path, gallery_root, case_store, sites)
        return aws_world(request.getfixturevalue("aws"), gallery_root, case_store, sites)

    return make


# --- review: before ------------------------------------------------------------------------


def test_before_mode_tells_reviewers_only_then_responders_on_confirm(world_factory):
    world = world_factory("before")
    service = world.service()
    result = service.handle(rule_event(make_event(crop_jpeg_b64=crop_b64())))

    assert result["decision"] == "review_pending"
    (request,) = world.sms_to(REVIEWER)
    link = f"https://review.example.org/r/{result['review_id']}"
    assert link in request and "Dana" not in request and "MP990001" not in request  # nothing without a login
    assert segment_count(request) <= 2
    assert world.sms_to(RESPONDER) == [] and world.sms_to(SECOND) == []
    (mail,) = world.mail()
    assert mail["To"] == REVIEWER_MAIL and "North trailhead" in mail["Subject"]
    images = [part for part in mail.walk() if part.get_content_maintype() == "image"]
    assert [part.get_filename() for part in images] == ["camera-crop.jpg", "case-photo.jpeg"]
    assert images[0].get_payload(decode=True) == CROP

    outcome = service.review.decide(result["review_id"], "alice", confirm=True)

    assert outcome.record.state == State.CONFIRMED and outcome.record.decided_by == "alice"
    (english,) = world.sms_to(RESPONDER)
    (spanish,) = world.sms_to(RESPONDER_ES)
    assert english.startswith("CONFIRMED BY REVIEWER: MISSING PERSON SEEN: Dana Example")
    assert spanish.startswith("CONFIRMADO POR REVISOR: PERSONA DESAPARECIDA VISTA: Dana Example")
    assert link in english and link in spanish
    assert segment_count(english) <= 2 and segment_count(spanish) <= 2
    with pytest.raises(Decided, match="already confirmed by alice"):
        service.review.decide(result["review_id"], "bob", confirm=False)
    actions = [entry["action"] for entry in service.review.reviews.audit_trail(result["review_id"])]
    assert actions == ["created", "confirmed", "notified"]


def test_concurrent_confirm_and_dismiss_one_wins_and_a_dismissal_texts_no_responder(world_factory):
    """Two reviewers click at the same moment, one Confirm and one Not this person, in
    separate clients (as two Lambda containers or two server threads would be)."""
    world = world_factory("before", suppress_after_dismissal_minutes=0)
    service = world.service(cooldown_seconds=0)
    confirmed = 0
    for round_ in range(6):
        review_id = service.handle(rule_event(make_event()))["review_id"]
        barrier = threading.Barrier(2)
        picked: list[str] = []

        def click(user: str, confirm: bool, barrier=barrier, picked=picked, review_id=review_id) -> None:
            barrier.wait()
            try:
                picked.append(world.service().review.decide(review_id, user, confirm=confirm).record.state.value)
            except Decided:
                picked.append("told it was already decided")

        threads = [
            threading.Thread(target=click, args=("alice", round_ % 2 == 0)),
            threading.Thread(target=click, args=("bob", round_ % 2 == 1)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(picked)[1] == "told it was already decided" and len(set(picked)) == 2, picked
        final = service.review.reviews.get(review_id)
        confirmed += final.state == State.CONFIRMED
        # Responders were texted for the confirmed alerts only, never for a dismissed one.
        assert len(world.sms_to(RESPONDER)) == confirmed, (round_, final.state)


def test_a_dismissal_suppresses_that_person_at_that_site_only(world_factory):
    world = world_factory("before")
    clock = Clock()
    service = world.service(clock=clock, cooldown_seconds=0)
    first = service.handle(rule_event(make_event()))
    service.review.decide(first["review_id"], "alice", confirm=False, note="look-alike, a hiker")

    assert service.handle(rule_event(make_event()))["decision"] == "suppressed"
    assert service.handle(rule_event(make_event(device_id="dev-south")))["decision"] == "review_pending"
    other = service.handle(rule_event(make_event(person_id="namus:MP990002", case_id="MP990002")))
    assert other["decision"] == "review_pending"
    clock.now += 61 * 60  # the site's 60 minutes are over
    assert service.handle(rule_event(make_event()))["decision"] == "review_pending"
    assert world.sms_to(RESPONDER) == []


# --- review: after ---------------------------------------------------------------------------


def test_after_mode_texts_at_once_and_follows_up_a_dismissal(world_factory):
    world = world_factory("after")
    service = world.service()
    result = service.handle(rule_event(make_event()))
    assert result["decision"] == "sent"
    (alert,) = world.sms_to(RESPONDER)
    assert alert.startswith("MISSING PERSON SEEN: Dana Example") and f"/r/{result['review_id']}" in alert
    assert len(world.sms_to(REVIEWER)) == 1  # reviewers still look

    service.review.decide(result["review_id"], "alice", confirm=False)

    followup = world.sms_to(RESPONDER)[1]
    when = make_event().last_seen.strftime("%H:%M")
    assert followup == (
        f"DISREGARD the alert of {when} about Dana Example, NamUs MP990001, at North trailhead: "
        "a reviewer found it is not this person."
    )
    assert world.sms_to(RESPONDER_ES)[1].startswith(f"IGNORE la alerta de las {when} sobre Dana Example")
    assert service.handle(rule_event(make_event()))["decision"] == "suppressed"


# --- escalation and expiry -------------------------------------------------------------------


def test_a_pending_alert_escalates_once_then_expires(world_factory):
    world = world_factory("before", expire_after_hours=2)
    clock = Clock()
    service = world.service(clock=clock)
    result = service.handle(rule_event(make_event()))
    clock.now += 9 * 60
    assert [service.review.sweep()[k] for k in ("escalated", "expired")] == [0, 0]
    clock.now += 2 * 60
    assert [service.review.sweep()[k] for k in ("escalated", "expired")] == [1, 0]
    assert [service.review.sweep()[k] for k in ("escalated", "expired")] == [0, 0]  # once only
    (escalation,) = world.sms_to(SECOND)
    assert escalation.startswith("REVIEW NEEDED, no decision after 10 min") and result["review_id"] in escalation
    clock.now += 2 * 3600
    assert service.review.sweep()["expired"] == 1
    assert service.review.reviews.get(result["review_id"]).state == State.EXPIRED
    assert world.sms_to(RESPONDER) == []


# --- crops at rest -----------------------------------------------------------------------------


def test_the_crop_is_encrypted_at_rest_and_expires(world_factory):
    world = world_factory("before")
    clock = Clock()
    service = world.service(clock=clock)
    result = service.handle(rule_event(make_event(crop_jpeg_b64=crop_b64())))
    reviews = service.review.reviews
    assert reviews.get_crop(result["review_id"]) == CROP
    if world.name == "local":
        raw = (world.settings.local_dir / "alerts.sqlite3").read_bytes()
        assert CROP[:64] not in raw and CROP[-64:] not in raw
        key = world.settings.local_dir / "crop.key"
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    else:
        head = boto3.client("s3").head_object(Bucket="mpd-review-crops", Key=f"crops/{result['review_id']}.jpg")
        assert head["ServerSideEncryption"] == "aws:kms"
    record = reviews.get(result["review_id"])
    assert record.crop_available
    # Past its TTL the crop is never served, whether or not it was deleted yet.
    future = record.crop_expires_at + 1
    original = __import__("time").time
    try:
        __import__("time").time = lambda: future
        assert reviews.get_crop(result["review_id"]) is None
    finally:
        __import__("time").time = original


# --- languages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("language", ["en", "es"])
def test_every_message_fits_two_segments_in_each_language(language, world_factory):
    world = world_factory(
        "after", language=language, name=("Estación de autobuses del Parque Nacional " * 2)[:80].strip()
    )
    service = world.service()
    review = service.review
    result = service.handle(rule_event(make_event()))
    record = review.reviews.get(result["review_id"])
    for message in (
        review.reviewer_message(record, language),
        review.reviewer_message(record, language, escalation=True),
        review.responder_message(record, language, True),
        review.followup_message(record, language),
    ):
        assert segment_count(message.sms) <= 2, message.sms
        assert "/r/" in message.sms or "DISREGARD" in message.sms or "IGNORE" in message.sms


# --- reviewer accounts ---------------------------------------------------------------------------


def test_user_file_stores_argon2id_hashes_only_and_refuses_wrong_passwords(tmp_path):
    users = UserFile(tmp_path / "users.json")
    users.add("alice", "correct horse battery", ["north"])
    text = (tmp_path / "users.json").read_text()
    assert "correct horse" not in text and json.loads(text)["users"]["alice"]["password"].startswith("$argon2id$")
    assert stat.S_IMODE(os.stat(tmp_path / "users.json").st_mode) == 0o600
    assert users.authenticate("alice", "correct horse battery").sites == {"north"}
    for name, password in (("alice", "wrong password here"), ("mallory", "correct horse battery")):
        with pytest.raises(AuthError, match="wrong user name or password"):
            users.authenticate(name, password)
    with pytest.raises(ValueError, match="at least 12"):
        users.add("bob", "short", ["north"])


def test_cognito_login_maps_site_groups(aws):
    client = boto3.client("cognito-idp")
    pool = client.create_user_pool(PoolName="reviewers")["UserPool"]["Id"]
    app_client = client.create_user_pool_client(
        UserPoolId=pool, ClientName="review", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"]
    )["UserPoolClient"]["ClientId"]
    client.admin_create_user(UserPoolId=pool, Username="alice", MessageAction="SUPPRESS")
    client.admin_set_user_password(UserPoolId=pool, Username="alice", Password="Correct-Horse-9", Permanent=True)
    for group in ("site-north", "responders"):
        client.create_group(UserPoolId=pool, GroupName=group)
        client.admin_add_user_to_group(UserPoolId=pool, Username="alice", GroupName=group)
    auth = CognitoAuth(client, pool, app_client)

    assert auth.authenticate("alice", "Correct-Horse-9").sites == {"north"}
    with pytest.raises(AuthError):
        auth.authenticate("alice", "Wrong-Horse-9")
    with pytest.raises(AuthError):
        auth.authenticate("nobody", "Correct-Horse-9")


def test_review_ids_are_stable_per_event_and_unguessable_in_form():
    from sync_service.review.records import is_review_id
    from sync_service.review.service import review_id_for

    ids = {review_id_for(str(make_event().event_id)) for _ in range(50)}
    assert len(ids) == 50 and all(is_review_id(i) for i in ids)
    assert review_id_for("x") == review_id_for("x")
    assert np.mean([len(set(i)) for i in ids]) > 6
