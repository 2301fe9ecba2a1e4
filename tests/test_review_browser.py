"""The review page in a real browser: Debian's chromium, headless, driven by selenium
through Debian's chromedriver, against the page served by waitress (as ``mpd cloud
serve`` does) on the embedded backend. As a reviewer (log in from the SMS link, see
both photos, confirm, dismiss), and as an attacker (anonymous, another site's
reviewer, a forged CSRF token, an expired session). axe-core checks every page.

Screenshots go to ``$MPD_SCREENSHOTS`` when set (docs/review-*.png are made so)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from sync_service.alerts.config import AlertSettings, Sites
from sync_service.alerts.handler import AlertService, build_service
from sync_service.alerts.stores import read_sms_sink
from sync_service.review.app import build_app
from sync_service.review.auth import UserFile
from sync_service.review.records import State, new_review_id
from sync_service.review.server import ReviewServer
from sync_service.review.web import create_app
from tests.servers import free_port
from tests.test_alert_handler import gallery_root, make_event, rule_event  # noqa: F401  (fixtures)
from tests.test_review_service import crop_b64, write_case_store

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
AXE = Path(__file__).resolve().parent.parent / ".cache" / "axe-core-4.14.1" / "axe.min.js"
PASSWORD = "correct horse battery"
RESPONDER, RESPONDER_SOUTH, REVIEWER = "+15555550121", "+15555550131", "+15555550111"
PHONE, DESKTOP = (390, 844), (1280, 900)

SITES = Sites.model_validate(
    {
        "sites": {
            "north": {
                "name": "North trailhead",
                "timezone": "America/Chicago",
                "review": "before",
                "reviewers": [{"phone": REVIEWER}],
                "responders": [{"phone": RESPONDER}],
            },
            "south": {
                "name": "South gate",
                "review": "after",
                "language": "es",
                "responders": [{"phone": RESPONDER_SOUTH}],
            },
        },
        "devices": {
            "dev-north": {"name": "North trailhead", "site": "north", "cameras": {"cam0": "Gate camera"}},
            "dev-south": {"name": "South gate", "site": "south", "cameras": {"cam0": "Bus stop camera"}},
        },
    }
)

pytestmark = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them as root)",
)


class Site:
    """The cloud on one machine: the alert service and the review page on one SQLite store."""

    def __init__(self, root: Path, gallery: Path) -> None:
        port = free_port()
        self.settings = AlertSettings(
            backend="local",
            local_dir=root / "cloud",
            sites=SITES,
            gallery_url=str(gallery),
            store_url=str(write_case_store(root / "store")),
            review_url=f"http://127.0.0.1:{port}",
        )
        users = UserFile(root / "users.json")
        users.add("alice", PASSWORD, ["north"])
        users.add("bob", PASSWORD, ["north"])
        users.add("carol", PASSWORD, ["south"])
        self.env = {"MPD_REVIEW_USERS": str(users.path)}
        self.alerts: AlertService = build_service(self.settings, fetch=None)
        app = build_app(self.settings, build_service(self.settings, fetch=None).review, self.env)
        self.server = ReviewServer(app, port=port).start()
        self.url = self.server.url

    def alert(self, **changes) -> str:
        result = self.alerts.handle(rule_event(make_event(**changes)))
        assert "review_id" in result, result
        return result["review_id"]

    def sms_to(self, number: str) -> list[str]:
        return [m["message"] for m in read_sms_sink(self.settings.sms_sink) if m["phone_number"] == number]

    def record(self, review_id: str):
        return self.alerts.review.reviews.get(review_id)


@pytest.fixture()
def site(tmp_path, gallery_root) -> Iterator[Site]:  # noqa: F811
    world = Site(tmp_path, gallery_root)
    yield world
    world.server.stop()


def chrome(size: tuple[int, int] = DESKTOP):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="mpd-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(2)
    driver.profile_dir = profile
    return driver


@pytest.fixture()
def browser() -> Iterator:
    driver = chrome()
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


@pytest.fixture()
def second_browser() -> Iterator:
    driver = chrome()
    yield driver
    driver.quit()
    shutil.rmtree(driver.profile_dir, ignore_errors=True)


def by_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def all_css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def log_in(driver, user: str, password: str = PASSWORD) -> None:
    """Log in and wait for the answer: the page it leads to, or the refusal."""
    from selenium.webdriver.support.ui import WebDriverWait

    by_css(driver, "#username").send_keys(user)
    by_css(driver, "#password").send_keys(password)
    by_css(driver, "form.login button[type=submit]").click()
    WebDriverWait(driver, 20).until(lambda d: "/login" not in d.current_url or all_css(d, ".flash-error"))


def flashes(driver) -> list[str]:
    return [element.text for element in all_css(driver, ".flash")]


def image_loaded(driver, selector: str) -> bool:
    return driver.execute_script(
        "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;", selector
    )


def accessibility_problems(driver) -> list[str]:
    """axe-core's serious and critical violations on the current page."""
    if not AXE.exists():
        pytest.skip(f"axe-core not found at {AXE} (scripts/setup.sh fetches it with npm)")
    driver.execute_script(AXE.read_text())
    result = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations)).catch(e => done(String(e)));"
    )
    assert isinstance(result, list), result
    return [f"{v['id']} ({v['impact']}): {v['help']}" for v in result if v["impact"] in ("serious", "critical")]


def screenshot(driver, name: str, size: tuple[int, int]) -> None:
    folder = os.environ.get("MPD_SCREENSHOTS")
    driver.set_window_size(*size)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(size[0], min(max(height + 120, size[1]), 1600))
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"review-{name}.png"))
    driver.set_window_size(*DESKTOP)


# --- as a reviewer ------------------------------------------------------------------------------


def test_reviewer_follows_the_sms_link_logs_in_sees_both_photos_and_confirms(site, browser):
    review_id = site.alert(crop_jpeg_b64=crop_b64())
    (request,) = site.sms_to(REVIEWER)
    link = request.split()[-1]
    assert link == f"{site.url}/r/{review_id}"

    browser.get(link)
    assert browser.current_url.startswith(f"{site.url}/login")
    assert "Dana" not in browser.page_source  # nothing before the login
    log_in(browser, "alice")

    assert browser.current_url == f"{site.url}/alerts/{review_id}"
    assert by_css(browser, "h1").text.startswith("Dana Example")
    assert image_loaded(browser, "img[alt^='The camera']") and image_loaded(browser, "img[alt^='Case photo 1']")
    crop_url = by_css(browser, "img[alt^='The camera']").get_attribute("src")
    assert requests.get(crop_url, allow_redirects=False, timeout=5).status_code == 302  # not without the session
    facts = by_css(browser, "section[aria-labelledby=match-h]").text
    assert "0.61 best" in facts and "threshold 0.42 (+0.19)" in facts and "Gate camera, North trailhead" in facts
    assert accessibility_problems(browser) == []
    screenshot(browser, "alert-desktop", DESKTOP)
    screenshot(browser, "alert-phone", PHONE)
    assert site.sms_to(RESPONDER) == []

    by_css(browser, "#note").send_keys("Same jacket as in the case photo")
    by_css(browser, "input.confirm").click()

    assert flashes(browser) == ["Confirmed. 1 recipient(s) notified."]
    (sms,) = site.sms_to(RESPONDER)
    assert sms.startswith("CONFIRMED BY REVIEWER: MISSING PERSON SEEN: Dana Example") and link in sms
    record = site.record(review_id)
    assert record.state == State.CONFIRMED and record.decided_by == "alice"
    assert record.note == "Same jacket as in the case photo"
    history = by_css(browser, "ol.trail").text
    assert "alice · viewed" in history and "alice · confirmed" in history
    assert not all_css(browser, "form.decide")  # decided: no buttons any more
    assert accessibility_problems(browser) == []


def test_list_shows_pending_on_top_and_pages_through_older_alerts(site, browser):
    decided = site.alert(case_id="MP990002", person_id="namus:MP990002")
    site.alerts.review.decide(decided, "bob", confirm=False)
    pending = site.alert(crop_jpeg_b64=crop_b64())
    store = site.alerts.review.reviews
    template = store.get(pending)
    for index in range(60):  # older, decided alerts to page through
        store.create(
            template.model_copy(
                update={"review_id": new_review_id(), "state": State.CONFIRMED, "created_ms": index + 1}
            )
        )
    browser.get(f"{site.url}/alerts")
    log_in(browser, "bob")
    rows = all_css(browser, "li.alert-row")
    assert len(rows) == 25
    assert rows[0].find_element("css selector", ".badge").text.lower() == "pending"
    assert pending in rows[0].find_element("css selector", "a").get_attribute("href")
    assert decided in rows[1].find_element("css selector", "a").get_attribute("href")
    assert accessibility_problems(browser) == []
    screenshot(browser, "list-desktop", DESKTOP)
    screenshot(browser, "list-phone", PHONE)
    seen = {row.find_element("css selector", "a").get_attribute("href") for row in rows}
    by_css(browser, "a[rel=next]").click()
    seen |= {a.get_attribute("href") for a in all_css(browser, "li.alert-row a")}
    by_css(browser, "a[rel=next]").click()
    seen |= {a.get_attribute("href") for a in all_css(browser, "li.alert-row a")}
    assert not all_css(browser, "a[rel=next]")
    assert len(seen) == 62


def test_dismissal_before_suppresses_the_person_at_the_site(site, browser):
    review_id = site.alert()
    browser.get(f"{site.url}/r/{review_id}")
    log_in(browser, "alice")
    by_css(browser, "#note").send_keys("A hiker, not her")
    by_css(browser, "input.dismiss").click()

    assert flashes(browser) == ["Dismissed."]
    assert site.record(review_id).state == State.DISMISSED
    assert site.sms_to(RESPONDER) == []
    # The same person at the same site does not page anyone for the site's suppression time.
    later = site.alerts.handle(rule_event(make_event()))
    assert later["decision"] in ("suppressed", "cooldown")
    fresh = build_service(site.settings.model_copy(update={"cooldown_seconds": 0}), fetch=None)
    assert fresh.handle(rule_event(make_event()))["decision"] == "suppressed"


def test_dismissal_after_the_sms_sends_the_follow_up(site, browser):
    review_id = site.alert(device_id="dev-south")
    (alert,) = site.sms_to(RESPONDER_SOUTH)
    assert alert.startswith("PERSONA DESAPARECIDA VISTA: Dana Example")  # the site speaks Spanish
    browser.get(f"{site.url}/r/{review_id}")
    log_in(browser, "carol")
    assert "Responders were texted at once" in by_css(browser, "p.mode").text
    by_css(browser, "input.dismiss").click()

    assert flashes(browser) == ["Dismissed. 1 recipient(s) notified."]
    followup = site.sms_to(RESPONDER_SOUTH)[1]
    assert followup.startswith("IGNORE la alerta de las") and "Dana Example" in followup


def test_a_confirmation_whose_sms_failed_says_so_and_the_sweep_delivers_it_once(site, browser):
    review_id = site.alert()
    sink = site.settings.sms_sink
    sink.rename(sink.with_suffix(".aside"))
    sink.mkdir()  # the SMS sink cannot be written: as SNS down
    browser.get(f"{site.url}/r/{review_id}")
    log_in(browser, "alice")
    by_css(browser, "input.confirm").click()

    told = flashes(browser)
    assert told[0] == "Confirmed." and told[1].startswith("Sending failed: IsADirectoryError")
    assert "retried automatically" in told[1]
    notice = by_css(browser, "li.delivery-due").text
    assert notice.startswith("Responders: not delivered yet to +15555550121") and "next try" in notice
    assert accessibility_problems(browser) == []
    screenshot(browser, "alert-retrying-desktop", DESKTOP)
    browser.get(f"{site.url}/alerts")
    assert "not delivered yet: retrying" in by_css(browser, "li.alert-row .warn").text

    sink.rmdir()
    sink.with_suffix(".aside").rename(sink)
    later = build_service(site.settings, fetch=None, clock=lambda: time.time() + 31)  # the next sweep
    assert later.review.sweep()["retried"] == 1
    assert later.review.sweep()["retried"] == 0
    browser.get(f"{site.url}/alerts/{review_id}")
    assert by_css(browser, "li.delivery-delivered").text == "Responders: delivered to 1 recipient(s) after 2 attempts."
    history = by_css(browser, "ol.trail").text
    assert "system · notify_failed · responders, attempt 1" in history and "system · notified" in history
    assert len(site.sms_to(RESPONDER)) == 1
    assert not all_css(browser, "li.alert-row .warn")


def test_two_reviewers_one_decision_wins_the_other_is_told(site, browser, second_browser):
    review_id = site.alert()
    for driver, user in ((browser, "alice"), (second_browser, "bob")):
        driver.get(f"{site.url}/r/{review_id}")
        log_in(driver, user)
    by_css(second_browser, "input.dismiss").click()  # bob first: not this person
    by_css(browser, "input.confirm").click()  # alice's page still showed the buttons

    assert flashes(second_browser) == ["Dismissed."]
    (told,) = flashes(browser)
    assert told.startswith("Not applied: this alert was already dismissed by bob at")
    assert site.record(review_id).state == State.DISMISSED
    assert site.sms_to(RESPONDER) == []  # zero SMS to responders for a dismissed alert


# --- as an attacker -----------------------------------------------------------------------------


def test_a_reviewer_of_another_site_cannot_open_it(site, browser):
    review_id = site.alert(crop_jpeg_b64=crop_b64())
    browser.get(f"{site.url}/r/{review_id}")
    log_in(browser, "carol")  # assigned to the south site only

    assert by_css(browser, "h1").text == "Not found"
    assert "Dana" not in browser.page_source
    for path in (f"/alerts/{review_id}/crop.jpg", f"/alerts/{review_id}/photo/0"):
        browser.get(site.url + path)
        assert "Not found" in browser.page_source
    browser.get(f"{site.url}/alerts")
    assert all_css(browser, "li.alert-row") == []
    actions = [(e["actor"], e["action"]) for e in site.alerts.review.reviews.audit_trail(review_id)]
    assert actions.count(("carol", "denied")) == 3


def test_an_anonymous_request_gets_nothing(site):
    review_id = site.alert(crop_jpeg_b64=crop_b64())
    for path in (f"/r/{review_id}", f"/alerts/{review_id}", f"/alerts/{review_id}/crop.jpg",
                 f"/alerts/{review_id}/photo/0", "/alerts", "/r/zzzzzzzzzz"):  # fmt: skip
        answer = requests.get(site.url + path, allow_redirects=False, timeout=5)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/login"), path
        assert b"Dana" not in answer.content and base64.b64decode(crop_b64())[:32] not in answer.content
    decide = requests.post(f"{site.url}/alerts/{review_id}/decide", data={"confirm": "Confirm"}, timeout=5)
    assert decide.status_code == 400  # no CSRF token, no session
    assert site.record(review_id).state == State.PENDING


def session_of(driver) -> requests.Session:
    http = requests.Session()
    for cookie in driver.get_cookies():
        http.cookies.set(cookie["name"], cookie["value"])
    return http


def test_a_forged_csrf_token_is_refused(site, browser):
    review_id = site.alert()
    browser.get(f"{site.url}/r/{review_id}")
    log_in(browser, "alice")
    http = session_of(browser)  # the reviewer's own cookie, as a cross-site form would carry it
    real = by_css(browser, "form.decide input[name=csrf_token]").get_attribute("value")
    for token in (None, "forged", real[::-1]):
        data = {"confirm": "Confirm"} | ({"csrf_token": token} if token else {})
        answer = http.post(f"{site.url}/alerts/{review_id}/decide", data=data, allow_redirects=False, timeout=5)
        assert answer.status_code == 400 and b"Request refused" in answer.content, token
    assert site.record(review_id).state == State.PENDING and site.sms_to(RESPONDER) == []
    # The cookie cannot be sent by another site's form either: SameSite=Lax, HttpOnly.
    (cookie,) = [c for c in browser.get_cookies() if c["name"] == "mpd_review"]
    assert cookie["sameSite"] == "Lax" and cookie["httpOnly"]
    answer = http.post(f"{site.url}/alerts/{review_id}/decide", data={"confirm": "Confirm", "csrf_token": real},
                       allow_redirects=False, timeout=5)  # fmt: skip
    assert answer.status_code == 302 and site.record(review_id).state == State.CONFIRMED


def test_an_expired_session_must_log_in_again(site, tmp_path, browser):
    review_id = site.alert()
    app = create_app(site.alerts.review, UserFile(Path(site.env["MPD_REVIEW_USERS"])), b"k" * 32,
                     session_minutes=6 / 60, secure_cookies=False)  # fmt: skip
    short = ReviewServer(app, port=0).start()
    try:
        browser.get(f"{short.url}/r/{review_id}")
        log_in(browser, "alice")
        assert browser.current_url.endswith(f"/alerts/{review_id}")
        stolen = session_of(browser)
        time.sleep(8)  # past 6 s; the cookie timestamp has whole-second resolution
        browser.get(f"{short.url}/alerts/{review_id}")
        assert "/login" in browser.current_url and "Dana" not in browser.page_source
        # The cookie itself is refused past its age, even replayed by hand.
        answer = stolen.get(f"{short.url}/alerts/{review_id}", allow_redirects=False, timeout=5)
        assert answer.status_code == 302
    finally:
        short.stop()


def test_login_page_is_accessible_and_refuses_a_wrong_password(site, browser):
    browser.get(f"{site.url}/login")
    assert accessibility_problems(browser) == []
    screenshot(browser, "login-phone", PHONE)
    log_in(browser, "alice", "not the password!")
    assert flashes(browser) == ["wrong user name or password"]
    entries = site.alerts.review.reviews.audit_trail("auth")
    assert entries[-1]["action"] == "login_failed" and entries[-1]["actor"] == "alice"
    assert json.dumps(entries).count("not the password") == 0
