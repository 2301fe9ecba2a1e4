"""Peak memory of the ingest and of the alert Lambda's case lookup under a gzip bomb.

A NamUs dev server answers one case with the ``bomb`` fault: ~200 KB on the wire that
inflates to ~200 MB (the case JSON followed by spaces, so it is still valid JSON). The
victim runs in its own process and its peak resident memory is read with ``wait4``.
``--code DIR`` runs the victim from another checkout (e.g. a worktree of an older
commit), so the same attack can be measured before and after a change, side by side.

    python benchmarks/bench_hostile_source.py [--code DIR] [--repeats 3] > hostile.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sync_service.dev_servers.fixtures import write_fixture_cases  # noqa: E402
from sync_service.dev_servers.server import SourceServer  # noqa: E402
from tests.process_memory import run_measuring_peak_rss  # noqa: E402
from tests.test_dev_servers import made_up_cases  # noqa: E402

LOOKUP = """
import json, sys, time
from sync_service.alerts.cases import CaseLookup
from sync_service.alerts.config import AlertSettings
from sync_service.alerts.handler import source_fetcher
settings = AlertSettings(backend="local", source_urls={"namus": sys.argv[1]}, case_lookup_timeout=10)
started = time.monotonic()
lookup = CaseLookup(source_fetcher(settings), 10)
try:
    details = lookup.details("namus", "MP500", "Dana Example")
except TypeError:  # the lookup before the alert handler took the gallery's name (commit 91662be)
    from edge_app.match_event import MatchEvent
    from datetime import UTC, datetime, timedelta
    now = datetime.now(UTC)
    details = lookup.details(MatchEvent(
        device_id="dev-1", camera_id="cam0", person_id="namus:MP500", source="namus", case_id="MP500",
        display_name="Dana Example", best_similarity=0.6, mean_similarity=0.55, frames_used=5,
        first_seen=now - timedelta(seconds=3), last_seen=now, gallery_version="v1",
        model_id="sface_2021dec", threshold=0.5))
print(json.dumps({"fresh": details.fresh, "seconds": round(time.monotonic() - started, 3)}))
"""


def peak(command: list[str], code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "MPD_SOURCES_ALLOW_LOOPBACK": "1", "POWERTOOLS_LOG_LEVEL": "ERROR"}
    started = time.monotonic()
    result, peak_mb = run_measuring_peak_rss(command, cwd=code, env=env)
    lines = result.stdout.strip().splitlines()
    return {
        "exit_code": result.returncode,
        "peak_rss_mb": round(peak_mb, 1),
        "seconds": round(time.monotonic() - started, 2),
        "last_line": lines[-1][:300] if lines else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="checkout the victim runs from (default: this one)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    code = args.code.resolve()
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        data = write_fixture_cases(work / "src", "namus", made_up_cases(3), states=["Vermont", "Ohio"])
        for faults in ("", "bomb=501"):
            label = "bomb" if faults else "plain"
            with SourceServer("namus", data, faults=faults) as server:
                for repeat in range(args.repeats):
                    ingest = [sys.executable, "-m", "mpd_cli", "ingest", "namus", "--base-url", server.url,
                              "--store", str(work / f"store-{label}-{repeat}"), "--rate-limit", "100",
                              "--json", "--no-progress"]  # fmt: skip
                    results.setdefault(f"ingest_{label}", []).append(peak(ingest, code))
            with SourceServer("namus", data, faults=faults.replace("501", "500")) as server:
                for _ in range(args.repeats):
                    lookup = [sys.executable, "-c", LOOKUP, server.url]
                    results.setdefault(f"alert_lookup_{label}", []).append(peak(lookup, code))
    load = os.getloadavg()
    report = {
        "code": str(code),
        "load_average": [round(x, 2) for x in load],
        "median_peak_rss_mb": {k: statistics.median(r["peak_rss_mb"] for r in v) for k, v in results.items()},
        "runs": results,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
