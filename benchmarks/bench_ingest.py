"""Ingest politeness, resume cost and fault behaviour, against the NamUs dev server.

    .venv/bin/python benchmarks/bench_ingest.py [--repeats 3] [--cases 12] > ingest.json

1. Throughput against the rate limit: ingest the same made-up cases at several rate
   limits (1, 2, 5, 10 req/s) and unthrottled (baseline, same input, same run). From
   the server's arrival times: achieved request rate, its ratio to the limit, the
   smallest gap between two requests as a fraction of 1/limit, and the most requests
   seen in any sliding one-second window.
2. Resume cost after a kill: ``mpd ingest`` as a subprocess is SIGKILLed after about
   half the cases are stored, then run again; its requests and time are compared with
   an uninterrupted run of the same command on the same data.
3. Each fault alone versus no fault (same cases, same run): does the run finish, what
   does it store and reject, how many retries, and the time ratio to the baseline.

Photos are synthetic gradients (transport and storage do not depend on faces; no
real person's photo is needed). Medians over --repeats. Output: one JSON document.
"""

from __future__ import annotations

import argparse
import io
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from PIL import Image  # noqa: E402

from sync_service.dev_servers.fixtures import FixtureCase, FixturePhoto, write_fixture_cases  # noqa: E402
from sync_service.dev_servers.server import SourceServer  # noqa: E402
from sync_service.http import PoliteClient  # noqa: E402
from sync_service.ingest.engine import Ingest, SourceDown  # noqa: E402
from sync_service.sources import make_adapter  # noqa: E402
from sync_service.store import LocalStore  # noqa: E402

STATES = ["Vermont", "Ohio"]


def jpeg(shade: int) -> bytes:
    buffer = io.BytesIO()
    image = Image.linear_gradient("L").resize((320, 400)).convert("RGB")
    Image.eval(image, lambda v: (v + shade) % 256).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_data(folder: Path, count: int) -> Path:
    cases = [
        FixtureCase(case_id=3000 + i, first_name=f"Bench{i}", last_name="Madeup", state=STATES[i % 2],
                    photos=[FixturePhoto(jpeg(i), mime_type="image/jpg")])
        for i in range(count)
    ]  # fmt: skip
    return write_fixture_cases(folder, "namus", cases, states=STATES)


def run_ingest(server: SourceServer, store_dir: Path, rate: float, **client_options) -> dict:
    client = PoliteClient(rate, **{"backoff_base": 0.2, "backoff_max": 2.0, "allow_loopback": True, **client_options})
    started = time.monotonic()
    try:
        summary = Ingest(make_adapter("namus", server.url, client=client), LocalStore(store_dir)).run()
        outcome = {"finished": True, **{k: summary.to_json()[k] for k in ("new", "malformed", "not_found")}}
        outcome["photos_stored"] = summary.photos_stored
        outcome["photos_rejected"] = dict(summary.photos_rejected)
        outcome["removed"] = dict(summary.removed)
    except SourceDown as error:
        outcome = {"finished": False, "error": str(error)}
    outcome["seconds"] = time.monotonic() - started
    outcome["requests"] = client.stats.requests
    outcome["retries"] = dict(client.stats.failures)
    outcome["client_starts"] = client.stats.request_starts
    return outcome


def politeness(times: list[float], rate: float) -> dict:
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    achieved = (len(times) - 1) / (times[-1] - times[0])
    return {
        "achieved_req_per_s": round(achieved, 3),
        "achieved_over_limit": round(achieved / rate, 4),
        "min_gap_over_interval": round(min(gaps) * rate, 4),
        "max_requests_in_any_1s_window": max(sum(1 for t in times if start <= t < start + 1.0) for start in times),
    }


def bench_rate(work: Path, cases: int, repeats: int) -> dict:
    data = make_data(work / "rate-data", cases)
    results: dict[str, list] = {}
    for _ in range(repeats):
        for rate in (1.0, 2.0, 5.0, 10.0, 10_000.0):  # the last is the unthrottled baseline
            with SourceServer("namus", data) as server:
                outcome = run_ingest(server, Path(tempfile.mkdtemp(dir=work)), rate)
                arrivals = [r.at for r in server.requests]
            label = "unthrottled" if rate > 1000 else f"{rate:g}/s"
            # Client: when each request was sent. Server: when its handler thread ran
            # (later by however long a loaded machine took to schedule it).
            client = {f"client_{k}": v for k, v in politeness(outcome["client_starts"], rate).items()}
            server_side = {f"server_{k}": v for k, v in politeness(arrivals, rate).items()}
            results.setdefault(label, []).append(
                {"requests": len(arrivals), **client, **server_side, "seconds": outcome["seconds"]}
            )
    report = {}
    for label, runs in results.items():
        report[label] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    base = report["unthrottled"]["seconds"]
    for label in report:
        report[label]["time_over_unthrottled"] = round(report[label]["seconds"] / base, 2)
    return report


def bench_resume(work: Path, cases: int, repeats: int, rate: float) -> dict:
    data = make_data(work / "resume-data", cases)
    runs = []
    for index in range(repeats):
        with SourceServer("namus", data) as server:
            common = ["namus", "--base-url", server.url, "--rate-limit", f"{rate:g}", "--no-progress", "--json",
                      "--allow-loopback"]  # fmt: skip
            whole_store = work / f"whole-{index}"
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "mpd_cli", "ingest", *common, "--store", str(whole_store)],
                           check=True, capture_output=True, cwd=REPO)  # fmt: skip
            whole_seconds, whole_requests = time.monotonic() - started, len(server.requests)

            server.requests.clear()
            killed_store = work / f"killed-{index}"
            process = subprocess.Popen([sys.executable, "-m", "mpd_cli", "ingest", *common, "--store", str(killed_store)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)  # fmt: skip
            started = time.monotonic()
            while len(list((killed_store / "cases" / "namus").glob("*.json"))) < cases // 2:
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_seconds, killed_requests = time.monotonic() - started, len(server.requests)
            stored_at_kill = len(list((killed_store / "cases" / "namus").glob("*.json")))

            server.requests.clear()
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "mpd_cli", "ingest", *common, "--store", str(killed_store)],
                           check=True, capture_output=True, cwd=REPO)  # fmt: skip
            resume_seconds, resume_requests = time.monotonic() - started, len(server.requests)
            repeated = [r.path for r in server.requests if r.path.endswith(("/States", "/Search"))]
        runs.append(
            {
                "uninterrupted_requests": whole_requests,
                "uninterrupted_seconds": whole_seconds,
                "cases_stored_at_kill": stored_at_kill,
                "requests_before_kill": killed_requests,
                "resume_requests": resume_requests,
                "listing_requests_repeated_on_resume": len(repeated),
                "extra_requests_due_to_kill": killed_requests + resume_requests - whole_requests,
                "resume_seconds": resume_seconds,
                "killed_plus_resume_over_uninterrupted_seconds": (killed_seconds + resume_seconds) / whole_seconds,
            }
        )
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


FAULTS = {
    "none": "",
    "5xx burst (2 per request)": "5xx=2",
    "429 Retry-After 1 s (once per request)": "429=1:1",
    "slow 0.3 s every response": "slow=0.3",
    "slow 3 s once per request (read timeout 1 s)": "slow=3:1",
    "malformed JSON (2 cases)": "malformed=3001+3002",
    "case 404 although listed (1 case)": "gone=3003",
    "truncated images (2)": "truncated=30040+30050",
    "non-image bytes as image/jpeg (2)": "nonimage=30060+30070",
}


def bench_faults(work: Path, cases: int, rate: float, repeats: int) -> dict:
    data = make_data(work / "fault-data", cases)
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        for label, spec in FAULTS.items():
            with SourceServer("namus", data, faults=spec) as server:
                outcome = run_ingest(server, Path(tempfile.mkdtemp(dir=work)), rate, read_timeout=1.0)
            outcome.pop("client_starts")
            runs.setdefault(label, []).append(outcome)
    report = {}
    for label, outcomes in runs.items():
        report[label] = {**outcomes[0], "seconds": statistics.median(o["seconds"] for o in outcomes)}
    base = report["none"]["seconds"]
    for outcome in report.values():
        outcome["time_over_no_fault"] = round(outcome["seconds"] / base, 2)
    report["source down (nothing listening)"] = run_ingest_down(work, rate)
    return report


def run_ingest_down(work: Path, rate: float) -> dict:
    from tests.servers import free_port

    result = subprocess.run(
        [sys.executable, "-m", "mpd_cli", "ingest", "namus", "--base-url", f"http://127.0.0.1:{free_port()}",
         "--store", str(work / "down"), "--rate-limit", f"{rate:g}", "--retries", "2", "--allow-loopback"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    return {"exit_code": result.returncode, "stderr_last_line": result.stderr.strip().splitlines()[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="made-up cases (2 requests each + listing)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-rate", action="store_true", help="skip part 1 (about 50 s per repeat)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        report = {"cases": args.cases, "repeats": args.repeats}
        if not args.skip_rate:
            report["rate_limit"] = bench_rate(work, args.cases, args.repeats)
        report["resume_after_kill"] = bench_resume(work, args.cases * 2, args.repeats, rate=10.0)
        report["faults"] = bench_faults(work, args.cases, rate=20.0, repeats=args.repeats)
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
