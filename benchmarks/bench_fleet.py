"""Fleet load test: N simulated devices against mosquitto (mutual TLS, one certificate per
device, per-device topic ACLs like the IoT policy) and a real `mpd cloud serve` (alert rule
+ handler, fleet health), with a broker restart in the middle (a reconnect storm).

Each device sends health every interval (its own phase) and, at a fleet-wide Poisson rate,
confirmed matches (each a new event for a new case); some matches are sent twice with the
same event id, as a device's outbox does after a lost PUBACK. Devices keep persistent
sessions and publish at QoS 1 (paho queues while disconnected), as the device does.

Measured: health and match messages published vs taken in by the cloud (fleet state,
decisions), SMS vs distinct events (duplicates), decisions per second, the handler's time
per event and publish -> decision latency (p50/p95), and the broker restart's recovery.

    python benchmarks/bench_fleet.py --devices 1000 --seconds 120 --health-interval 10 \\
        --match-rate 2 --restart-at 50 > fleet.json

Prints one JSON document. The machine is shared: the load average is recorded with it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MPD = str(Path(sys.executable).parent / "mpd")


# --- PKI: one CA, the broker, the cloud backend, and a certificate per device (EC P-256) ----


def make_pki(folder: Path, devices: list[str]) -> dict:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("bench-ca")).issuer_name(name("bench-ca"))
        .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(cn: str, server: bool = False) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )  # fmt: skip
        if server:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        crt, pem = folder / f"{cn}.crt", folder / f"{cn}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
        return str(crt), str(pem)

    pki = {"ca": str(folder / "ca.crt"), "server": issue("localhost", server=True), "backend": issue("cloud-backend")}
    pki["devices"] = {device: issue(device) for device in devices}
    for path in folder.iterdir():
        path.chmod(0o644)
    folder.chmod(0o755)
    return pki


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto with mutual TLS, persistence (sessions and queued QoS 1 survive a restart) and
    per-device ACLs (a device writes only under mpd/<its CN>/, as the IoT policy allows)."""

    def __init__(self, pki: dict, folder: Path) -> None:
        self.port, self.folder = free_port(), folder
        (folder / "acl").write_text(
            "pattern write mpd/%u/#\npattern read mpd/gallery/#\nuser cloud-backend\ntopic read mpd/#\n"
        )
        user = "user root\n" if os.geteuid() == 0 else ""
        (folder / "mosquitto.conf").write_text(
            f"{user}per_listener_settings true\npersistence true\npersistence_location {folder}/\nautosave_interval 5\n"
            f"log_dest stderr\nlistener {self.port} 127.0.0.1\ncafile {pki['ca']}\ncertfile {pki['server'][0]}\n"
            f"keyfile {pki['server'][1]}\nrequire_certificate true\nuse_identity_as_username true\n"
            f"allow_anonymous false\nacl_file {folder}/acl\nmax_qos 1\nmax_queued_messages 1000000\n"
            "max_inflight_messages 100\nmax_connections -1\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "mosquitto.log", "ab")
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.folder / "mosquitto.conf")], stderr=log, stdout=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)  # saves the persistence file on the way out
            self.process.wait(timeout=20)
            self.process = None


# --- devices -------------------------------------------------------------------------------


def run_devices(
    devices: list[str], pki: dict, port: int, seconds: float, interval: float, match_rate: float,
    duplicate_share: float, out: str, seed: int,
) -> None:  # fmt: skip
    """One process's devices: connect, then health every interval and matches at ``match_rate``."""
    import paho.mqtt.client as mqtt

    from edge_app.match_event import CameraHealth, HealthReport, MatchEvent

    rng = random.Random(seed)
    clients = {}
    connected = threading.Event()
    for device in devices:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, clean_session=False)
        client.tls_set(ca_certs=pki["ca"], certfile=pki["devices"][device][0], keyfile=pki["devices"][device][1])
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(20)
        client.connect_async("127.0.0.1", port, keepalive=30)
        client.loop_start()
        clients[device] = client
    deadline = time.monotonic() + 60
    while not all(c.is_connected() for c in clients.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    connected.set()
    published = {"health": [], "match": [], "not_accepted": 0}
    start = time.monotonic()
    phases = {d: rng.uniform(0, interval) for d in devices}
    next_health = {d: start + phases[d] for d in devices}
    sent_health = {d: 0 for d in devices}
    next_match = start + rng.expovariate(match_rate) if match_rate > 0 else float("inf")
    resend: list[tuple[float, str, bytes, str]] = []
    while time.monotonic() - start < seconds:
        now = time.monotonic()
        for device in devices:
            if now >= next_health[device]:
                sent_health[device] += 1
                report = HealthReport(
                    device_id=device, gallery_version="20261129T030000Z", fps=12.0, outbox_depth=0, cameras=["gate"],
                    camera_health={"gate": CameraHealth(state="up", fps=12.0)}, interval_s=interval,
                    detail={"seq": sent_health[device]},
                )  # fmt: skip
                info = clients[device].publish(f"mpd/{device}/health", report.to_json(), qos=1)
                published["health"].append(device)
                if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                    published["not_accepted"] += 1
                next_health[device] += interval
        while now >= next_match:
            device = rng.choice(devices)
            seen = dt.datetime.now(dt.UTC)
            event = MatchEvent(
                device_id=device, camera_id="gate", person_id=f"namus:MP{rng.randrange(10**8)}", source="namus",
                case_id=f"MP{rng.randrange(10**8)}", display_name="Load Test", best_similarity=0.7,
                mean_similarity=0.65, frames_used=3, first_seen=seen, last_seen=seen,
                gallery_version="20261129T030000Z", model_id="sface_2021dec", threshold=0.5,
            )  # fmt: skip
            payload = event.to_json().encode()
            clients[device].publish(f"mpd/{device}/match", payload, qos=1)
            published["match"].append([str(event.event_id), time.time()])
            if rng.random() < duplicate_share:  # the outbox sends it again (its PUBACK was lost)
                resend.append((now + rng.uniform(1, 5), device, payload, str(event.event_id)))
            next_match += rng.expovariate(match_rate)
        for item in [r for r in resend if r[0] <= now]:
            resend.remove(item)
            clients[item[1]].publish(f"mpd/{item[1]}/match", item[2], qos=1)
            published.setdefault("resent", []).append(item[3])
        time.sleep(0.01)
    # Let queued messages out (a device keeps its session and its queue).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(c._out_messages for c in clients.values()):
        time.sleep(0.2)
    published["unsent_at_end"] = sum(len(c._out_messages) for c in clients.values())
    for client in clients.values():
        client.disconnect()
        client.loop_stop()
    Path(out).write_text(json.dumps(published))


# --- the run -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=120.0, help="How long devices publish.")
    parser.add_argument("--health-interval", type=float, default=10.0)
    parser.add_argument("--match-rate", type=float, default=2.0, help="Confirmed matches per second, fleet-wide.")
    parser.add_argument("--duplicate-share", type=float, default=0.05, help="Matches sent twice (outbox resend).")
    parser.add_argument("--restart-at", type=float, default=50.0, help="Restart the broker after this many seconds (0: never).")  # fmt: skip
    parser.add_argument("--down-seconds", type=float, default=5.0, help="How long the broker stays down.")
    parser.add_argument("--procs", type=int, default=4, help="Device processes.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    devices = [f"dev-{i:04d}" for i in range(args.devices)]
    pki = make_pki(work / "pki", devices)
    broker = Broker(pki, work)
    broker.start()
    cloud = work / "cloud"
    sites = {"devices": {d: {"name": d, "site": "load"} for d in devices},
             "sites": {"load": {"name": "Load test", "review": "after", "responders": [{"phone": "+15555550100"}]}}}  # fmt: skip
    (work / "sites.json").write_text(json.dumps(sites))
    env = {**os.environ, "MPD_ALERT_DIR": str(cloud), "MPD_SITES_FILE": str(work / "sites.json"),
           "MPD_DEVICE_ALERTS_PER_HOUR": "10000", "MPD_SOURCE_URLS": '{"namus": "http://127.0.0.1:9"}',
           "MPD_CASE_LOOKUP_TIMEOUT": "0.2", "MPD_ALERT_BACKEND": "local"}  # fmt: skip
    env.pop("AWS_ENDPOINT_URL", None)
    serve = subprocess.Popen(
        [MPD, "cloud", "serve", "--mqtt-port", str(broker.port), "--ca", pki["ca"], "--cert", pki["backend"][0],
         "--key", pki["backend"][1]], env=env, stdout=subprocess.PIPE, stderr=open(work / "serve.log", "wb"), text=True,
    )  # fmt: skip
    decisions: list[tuple[float, dict]] = []

    def read_decisions() -> None:
        for line in serve.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "decision" in record and "level" not in record:  # not the handler's log lines
                decisions.append((time.time(), record))

    threading.Thread(target=read_decisions, daemon=True).start()
    deadline = time.time() + 30  # until serve says it listens on both rules (stderr)
    while time.time() < deadline and (work / "serve.log").read_text().count("listening on") < 2:
        if serve.poll() is not None:
            sys.exit(f"mpd cloud serve exited: {(work / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.2)

    load_before = os.getloadavg()
    chunks = [devices[i :: args.procs] for i in range(args.procs)]
    outs = [str(work / f"devices-{i}.json") for i in range(args.procs)]
    context = multiprocessing.get_context("spawn")
    procs = [
        context.Process(target=run_devices, args=(chunk, pki, broker.port, args.seconds, args.health_interval,
                                                  args.match_rate / args.procs, args.duplicate_share, out, i))
        for i, (chunk, out) in enumerate(zip(chunks, outs, strict=True))
    ]  # fmt: skip
    started = time.time()
    for proc in procs:
        proc.start()
    restart = {}
    if args.restart_at > 0:
        time.sleep(args.restart_at)
        restart["stopped_at_s"] = round(time.time() - started, 1)
        broker.stop()
        time.sleep(args.down_seconds)
        broker.start()
        restart["restarted_at_s"] = round(time.time() - started, 1)
    for proc in procs:
        proc.join()
    publishing_ended = time.time()
    published = [json.loads(Path(o).read_text()) for o in outs]
    events = {event_id: at for p in published for event_id, at in p["match"]}
    health_sent = sum(len(p["health"]) for p in published)
    resent = [e for p in published for e in p.get("resent", [])]

    # Wait for the cloud to catch up (decisions for every event, every heartbeat folded in).
    fleet_db = cloud / "fleet.sqlite3"

    def fleet_reports() -> int:
        try:
            with sqlite3.connect(fleet_db) as db:
                return int(
                    db.execute("SELECT COALESCE(SUM(json_extract(state, '$.received')), 0) FROM devices").fetchone()[0]
                )
        except sqlite3.Error:
            return -1

    deadline = time.time() + 180
    while time.time() < deadline:
        decided = {d["event_id"] for _, d in decisions if "event_id" in d}
        if decided >= set(events) and fleet_reports() >= health_sent:
            break
        time.sleep(1)
    time.sleep(3)
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=30)
    load_after = os.getloadavg()
    broker.stop()

    sms = [json.loads(line) for line in (cloud / "sms.jsonl").read_text().splitlines() if line.strip()] if (cloud / "sms.jsonl").exists() else []  # fmt: skip
    by_decision: dict[str, int] = {}
    for _, d in decisions:
        by_decision[d.get("decision", "?")] = by_decision.get(d.get("decision", "?"), 0) + 1
    decided = {d["event_id"] for _, d in decisions if "event_id" in d}
    first_decision = {}
    for at, d in decisions:
        if "event_id" in d and d["event_id"] not in first_decision:
            first_decision[d["event_id"]] = at
    latency_ms = [(first_decision[e] - events[e]) * 1000 for e in events if e in first_decision]
    handler_ms = [d["handler_ms"] for _, d in decisions if "handler_ms" in d]
    times = sorted(at for at, _ in decisions)
    per_second: dict[int, int] = {}
    for at in times:
        per_second[int(at)] = per_second.get(int(at), 0) + 1
    reports = fleet_reports()
    result = {
        "devices": args.devices,
        "seconds": args.seconds,
        "health_interval_s": args.health_interval,
        "match_rate_per_s": args.match_rate,
        "broker_restart": restart or None,
        "health": {"published": health_sent, "taken_in": reports, "lost": health_sent - reports},
        "matches": {
            "events": len(events),
            "resent_copies": len(resent),
            "decided": len(decided & set(events)),
            "lost": len(set(events) - decided),
            "decisions": by_decision,
            "sms": len(sms),
            "duplicate_sms": len(sms) - len(events),
        },
        "decisions_per_s": {
            "mean_while_publishing": round(
                sum(1 for t in times if t <= publishing_ended) / max(publishing_ended - started, 1e-9), 2
            ),  # fmt: skip
            "peak_1s": max(per_second.values(), default=0),
        },
        "handler_ms": {"p50": percentile(handler_ms, 0.5), "p95": percentile(handler_ms, 0.95), "n": len(handler_ms)},
        "publish_to_decision_ms": {
            "p50": percentile(latency_ms, 0.5),
            "p95": percentile(latency_ms, 0.95),
            "max": round(max(latency_ms), 1) if latency_ms else None,
        },  # fmt: skip
        "unsent_at_end": sum(p["unsent_at_end"] for p in published),
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in load_after]},
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    if os.environ.get("BENCH_KEEP"):
        (work / "decisions.jsonl").write_text("".join(json.dumps(d) + "\n" for _, d in decisions))
        print(f"kept {work}", file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
