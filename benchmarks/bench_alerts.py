"""Alert path latency on one machine, against real local servers.

    .venv/bin/python benchmarks/bench_alerts.py [--events 200] [--e2e 100] > alerts.json

1. Handler latency (no source API call): ``AlertService.handle`` on distinct events
   against moto in server mode (DynamoDB + SNS), on the "sent" path (idempotency put,
   cooldown update, SNS publish, audit put, idempotency update), the duplicate path
   and the rejected path; beside it, in the same run and alternating with it, the
   baseline of one bare ``sns.publish`` to the same moto. Also the one-machine
   backend (SQLite + SMS file).
2. Handler latency with the case lookup, against the NamUs dev server (for scale).
3. End to end: a device publishes a match event to mosquitto (mutual TLS, QoS 1);
   the local rule engine applies the rule and runs the handler against moto; timed
   until the decision, by which point the SMS record exists in moto (checked after
   the run). Baseline: the MQTT hop alone (publish -> a subscriber receives) on the
   same broker, alternating with it.
4. Review, locally (embedded backend, the review page served by waitress as in
   ``mpd cloud serve``): device publish -> reviewer SMS written (``review: before``);
   the Confirm POST -> responder SMS written (its HTTP round trip: the SMS is written
   before the answer); the alert list with 1,000 alerts in the store (first page and a
   page deep in it), beside the login page (no store access) as the baseline.

Medians and p95 in milliseconds; the machine is shared and noisy, so compare the
ratios, which are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402

from edge_app.match_event import MatchEvent  # noqa: E402
from sync_service.alerts.config import AlertSettings, Sites  # noqa: E402
from sync_service.alerts.handler import build_service  # noqa: E402
from sync_service.alerts.local import LocalRuleEngine, MqttSettings, create_aws_resources  # noqa: E402
from sync_service.alerts.rule import LocalRule  # noqa: E402
from sync_service.dev_servers.fixtures import FixtureCase, write_fixture_cases  # noqa: E402
from sync_service.dev_servers.server import SourceServer  # noqa: E402
from tests.servers import Mosquitto, MotoServer, Pki  # noqa: E402  (the tests' real servers)

PHONE = "+15555550123"
REVIEWER = "+15555550111"
RULE = LocalRule.parse()
# The handler and end-to-end parts measure the responder path: texted at once. The
# device budget is lifted: the benchmark is one device sending hundreds of alerts.
AFTER = Sites.model_validate({"sites": {"bench": {"name": "Bench", "review": "after"}},
                              "devices": {"dev-bench": {"name": "Bench", "site": "bench"}}})  # fmt: skip
BEFORE = Sites.model_validate(
    {
        "sites": {"bench": {"name": "Bench", "review": "before", "reviewers": [{"phone": REVIEWER}],
                            "responders": [{"phone": PHONE}]}},
        "devices": {"dev-bench": {"name": "Bench", "site": "bench"}},
    }
)  # fmt: skip
UNLIMITED = 10_000
# The handler logs one JSON line per decision (to stdout, as Lambda wants); the
# benchmark's own stdout is its report, so its logs go to stderr.
for _handler in logging.getLogger("mpd-alerts").handlers:
    if isinstance(_handler, logging.StreamHandler):
        _handler.setStream(sys.stderr)


def summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p95_ms": round(ms[min(len(ms) - 1, int(0.95 * len(ms)))], 2),
        "max_ms": round(ms[-1], 2),
    }


def event(case_number: int, device: str = "dev-bench") -> MatchEvent:
    now = datetime.now(UTC)
    return MatchEvent(
        device_id=device,
        camera_id="cam0",
        person_id=f"namus:MP{case_number}",
        source="namus",
        case_id=f"MP{case_number}",
        display_name="Bench Example",
        best_similarity=0.6,
        mean_similarity=0.55,
        frames_used=5,
        first_seen=now - timedelta(seconds=3),
        last_seen=now,
        gallery_version="bench",
        model_id="sface_2021dec",
        threshold=0.42,
    )


def rule_event(match: MatchEvent) -> dict:
    return RULE.event_for(f"mpd/{match.device_id}/match", match.to_json().encode())


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def bench_handler(moto: MotoServer, events: int, workdir: Path) -> dict:
    moto.reset()
    settings = AlertSettings(
        backend="aws", phone_numbers=(PHONE,), case_lookup_timeout=1.0, sites=AFTER, device_alerts_per_hour=UNLIMITED
    )
    create_aws_resources(settings)
    service = build_service(settings, fetch=None)
    sns = boto3.client("sns")
    for n in range(10):  # warm up connections and code paths
        service.handle(rule_event(event(100_000 + n)))
        sns.publish(PhoneNumber=PHONE, Message="warm-up")
    sent, bare, duplicate, rejected = [], [], [], []
    handled = []
    cpu_started = time.process_time()
    for n in range(events):
        ev = rule_event(event(200_000 + n))
        handled.append(ev)
        sent.append(timed(lambda ev=ev: service.handle(ev)))
        bare.append(timed(lambda: sns.publish(PhoneNumber=PHONE, Message="baseline " * 20)))
    # CPU of this process only (handler + boto3 client side), not moto's: the handler's own work.
    cpu_per_pair_ms = (time.process_time() - cpu_started) * 1000 / events
    for ev in handled[:events]:
        duplicate.append(timed(lambda ev=ev: service.handle(ev)))
        rejected.append(timed(lambda: service.handle({"payload": "bm90IGpzb24=", "topic": "mpd/dev-bench/match"})))
    sms = moto.sent_sms()
    expected = 10 + 10 + events + events  # warm-up handler + warm-up bare + handler + baseline
    result = {
        "sent": summary(sent),
        "baseline_bare_sns_publish": summary(bare),
        "ratio_sent_to_bare_publish_median": round(statistics.median(sent) / statistics.median(bare), 2),
        "client_cpu_ms_per_sent_plus_bare_publish": round(cpu_per_pair_ms, 2),
        "duplicate": summary(duplicate),
        "rejected": summary(rejected),
        "sms_records": len(sms),
        "sms_records_expected": expected,
    }

    local = build_service(
        AlertSettings(
            backend="local",
            local_dir=workdir / "local",
            phone_numbers=(PHONE,),
            sites=AFTER,
            device_alerts_per_hour=UNLIMITED,
        ),
        fetch=None,
    )
    for n in range(10):
        local.handle(rule_event(event(300_000 + n)))
    result["local_backend_sent"] = summary(
        [timed(lambda n=n: local.handle(rule_event(event(400_000 + n)))) for n in range(events)]
    )

    # With the case lookup against the NamUs dev server (one made-up case).
    data = write_fixture_cases(
        workdir / "namus", "namus", [FixtureCase(990001, "Dana", "Example")], states=["Illinois"]
    )
    with SourceServer("namus", data) as server:
        os.environ.setdefault("MPD_SOURCES_ALLOW_LOOPBACK", "1")  # the lookup asks the local NamUs stand-in
        lookup_sites = Sites.model_validate(
            {"sites": {f"dev-lookup-{n}": {"name": "Lookup", "review": "after"} for n in range(min(events, 100))}}
        )
        looked_up = build_service(
            settings.model_copy(update={"source_urls": {"namus": server.url}, "sites": lookup_sites})
        )
        samples = []
        for n in range(min(events, 100)):
            moto_case = event(990001, device=f"dev-lookup-{n}")  # a new device (own site, after) each time: no cooldown
            samples.append(timed(lambda m=moto_case: looked_up.handle(rule_event(m))))
        result["sent_with_namus_dev_server_lookup"] = summary(samples[5:])
    return result


def bench_end_to_end(moto: MotoServer, broker: Mosquitto, pki: Pki, count: int) -> dict:
    moto.reset()
    settings = AlertSettings(backend="aws", phone_numbers=(PHONE,), sites=AFTER, device_alerts_per_hour=UNLIMITED)
    create_aws_resources(settings)
    done: dict[str, float] = {}
    arrived = threading.Condition()

    def on_decision(result: dict) -> None:
        with arrived:
            done[result.get("event_id", "?")] = time.perf_counter()
            arrived.notify_all()

    backend = broker.client_settings(pki.backend)
    engine = LocalRuleEngine(
        build_service(settings, fetch=None),
        MqttSettings(backend["host"], backend["port"], backend["ca"], backend["cert"], backend["key"], "bench-rule"),
        on_decision=on_decision,
    )
    engine.start()

    # The baseline: a plain subscriber on a topic outside the rule.
    echo_times: dict[bytes, float] = {}
    echo = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-echo")
    echo.tls_set(ca_certs=backend["ca"], certfile=backend["cert"], keyfile=backend["key"])

    def on_echo(client, userdata, message) -> None:
        with arrived:
            echo_times[message.payload[:36]] = time.perf_counter()
            arrived.notify_all()

    echo.on_message = on_echo
    echo.connect(backend["host"], backend["port"])
    # The broker's ACL lets a device publish only its own match and health topics, and the
    # cloud read them: the baseline hop is the device's health topic, which no rule reads here.
    echo.subscribe("mpd/dev-bench/health", qos=1)
    echo.loop_start()

    device_settings = broker.client_settings(pki.device_for("dev-bench"))  # CN = the device id (broker ACL)
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-device")
    device.tls_set(ca_certs=device_settings["ca"], certfile=device_settings["cert"], keyfile=device_settings["key"])
    device.connect(device_settings["host"], device_settings["port"])
    device.loop_start()
    time.sleep(0.5)

    alert_latency, mqtt_latency = [], []
    for n in range(count + 5):
        match = event(500_000 + n)
        key = str(match.event_id)
        started = time.perf_counter()
        device.publish(f"mpd/{match.device_id}/match", match.to_json(), qos=1)
        with arrived:
            arrived.wait_for(lambda k=key: k in done, timeout=10)
        if n >= 5:
            alert_latency.append(done[key] - started)

        token = uuid.uuid4().hex.encode().ljust(36)
        started = time.perf_counter()
        device.publish("mpd/dev-bench/health", token + match.to_json().encode(), qos=1)
        with arrived:
            arrived.wait_for(lambda t=token: t in echo_times, timeout=10)
        if n >= 5:
            mqtt_latency.append(echo_times[token] - started)

    device.disconnect()
    device.loop_stop()
    echo.disconnect()
    echo.loop_stop()
    engine.stop()
    return {
        "publish_to_sms_decision": summary(alert_latency),
        "baseline_mqtt_hop_only": summary(mqtt_latency),
        "ratio_median": round(statistics.median(alert_latency) / statistics.median(mqtt_latency), 1),
        "sms_records": len(moto.sent_sms()),
        "sms_records_expected": count + 5,
    }


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def bench_review(broker: Mosquitto, pki: Pki, count: int, workdir: Path, listed: int = 1000) -> dict:
    """The review targets, locally: publish -> reviewer SMS, Confirm -> responder SMS, list of 1,000."""
    import requests

    from sync_service.alerts.stores import read_sms_sink
    from sync_service.review.app import build_app
    from sync_service.review.auth import UserFile
    from sync_service.review.records import State, new_review_id
    from sync_service.review.server import ReviewServer
    from tests.servers import free_port

    port = free_port()
    root = workdir / "review"
    settings = AlertSettings(
        backend="local",
        local_dir=root,
        sites=BEFORE,
        device_alerts_per_hour=UNLIMITED,
        review_url=f"http://127.0.0.1:{port}",
    )
    users = UserFile(root / "users.json")
    users.add("bench", "bench password 1", ["bench"])
    service = build_service(settings, fetch=None)
    page = ReviewServer(build_app(settings, service.review, {"MPD_REVIEW_USERS": str(users.path)}), port=port).start()

    done: dict[str, tuple[float, dict]] = {}
    arrived = threading.Condition()

    def on_decision(result: dict) -> None:
        with arrived:
            done[result.get("event_id", "?")] = (time.perf_counter(), result)
            arrived.notify_all()

    backend = broker.client_settings(pki.backend)
    engine = LocalRuleEngine(
        service,
        MqttSettings(backend["host"], backend["port"], backend["ca"], backend["cert"], backend["key"], "bench-review"),
        on_decision=on_decision,
    )
    engine.start()
    device_settings = broker.client_settings(pki.device_for("dev-bench"))  # CN = the device id (broker ACL)
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-review-device")
    device.tls_set(ca_certs=device_settings["ca"], certfile=device_settings["cert"], keyfile=device_settings["key"])
    device.connect(device_settings["host"], device_settings["port"])
    device.loop_start()
    time.sleep(0.5)

    to_reviewer, review_ids = [], []
    for n in range(count + 5):
        match = event(600_000 + n)
        key = str(match.event_id)
        started = time.perf_counter()
        device.publish(f"mpd/{match.device_id}/match", match.to_json(), qos=1)
        with arrived:
            arrived.wait_for(lambda k=key: k in done, timeout=10)
        finished, result = done[key]
        assert result["decision"] == "review_pending", result
        review_ids.append(result["review_id"])
        if n >= 5:
            to_reviewer.append(finished - started)
    device.disconnect()
    device.loop_stop()
    engine.stop()
    reviewer_sms = [m for m in read_sms_sink(settings.sms_sink) if m["phone_number"] == REVIEWER]

    http = requests.Session()
    login = http.get(f"{page.url}/login", timeout=10)
    http.post(f"{page.url}/login", data={"username": "bench", "password": "bench password 1",
                                         "csrf_token": _csrf(login.text)}, timeout=10)  # fmt: skip
    confirm = []
    for n, review_id in enumerate(review_ids):
        token = _csrf(http.get(f"{page.url}/alerts/{review_id}", timeout=10).text)
        started = time.perf_counter()
        answer = http.post(f"{page.url}/alerts/{review_id}/decide", data={"confirm": "Confirm", "csrf_token": token},
                           allow_redirects=False, timeout=10)  # fmt: skip
        elapsed = time.perf_counter() - started
        assert answer.status_code == 302, answer.status_code
        if n >= 5:
            confirm.append(elapsed)
    responder_sms = [m for m in read_sms_sink(settings.sms_sink) if m["phone_number"] == PHONE]

    template = service.review.reviews.get(review_ids[0])
    for n in range(listed - len(review_ids)):
        state = State.PENDING if n % 10 == 0 else State.CONFIRMED
        service.review.reviews.create(
            template.model_copy(update={"review_id": new_review_id(), "state": state, "created_ms": 1_000 + n})
        )
    rows = http.get(f"{page.url}/alerts", timeout=10).text.count('class="alert-row')
    assert rows == 25, f"the list page shows {rows} alerts, not a page of 25 (logged out?)"
    first, deep, login_page = [], [], []
    cursor = "0#" + "0" * 11 + "1500"  # below about half of the seeded alerts
    for _ in range(35):
        first.append(timed(lambda: http.get(f"{page.url}/alerts", timeout=10).raise_for_status()))
        deep.append(
            timed(lambda: http.get(f"{page.url}/alerts", params={"before": cursor}, timeout=10).raise_for_status())
        )
        login_page.append(timed(lambda: requests.get(f"{page.url}/login", timeout=10).raise_for_status()))
    listed_total = sum(service.review.reviews.count(["bench"]).values())
    page.stop()
    return {
        "publish_to_reviewer_sms": summary(to_reviewer),
        "reviewer_sms_records": len(reviewer_sms),
        "reviewer_sms_expected": count + 5,
        "confirm_post_to_responder_sms": summary(confirm),
        "responder_sms_records": len(responder_sms),
        "responder_sms_expected": count + 5,
        "alerts_in_store": listed_total,
        "list_first_page": summary(first[5:]),
        "list_deep_page": summary(deep[5:]),
        "baseline_login_page": summary(login_page[5:]),
        "ratio_list_first_page_to_login_median": round(
            statistics.median(first[5:]) / statistics.median(login_page[5:]), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--e2e", type=int, default=100)
    parser.add_argument("--review", type=int, default=100, help="alerts through the review path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-alerts-") as tmp:
        workdir = Path(tmp)
        pki = Pki.create(workdir / "pki")
        (workdir / "moto").mkdir()
        (workdir / "mosquitto").mkdir()
        moto = MotoServer(workdir / "moto")
        broker = Mosquitto(pki, workdir / "mosquitto")
        moto.start()
        broker.start()
        import os

        os.environ |= {
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        try:
            report = {
                "machine_note": "2 shared cores; medians and side-by-side ratios are the figures to compare",
                "handler": bench_handler(moto, args.events, workdir),
                "end_to_end": bench_end_to_end(moto, broker, pki, args.e2e),
                "review": bench_review(broker, pki, args.review, workdir),
                "load_average": os.getloadavg(),
            }
        finally:
            broker.stop()
            moto.stop()
    json.dump(report, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
