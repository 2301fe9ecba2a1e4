"""Gallery download over a poor link: does it complete, and how many bytes cross the
link per byte of bundle; JSON on stdout.

    python benchmarks/bench_gallery_link.py [--persons 25000] [--scale 32] [--out FILE]

The link is tests/linkserver.py (a real local HTTP server): 64 kbit/s (8,000 B/s) and
every connection cut after 30 s, i.e. after 240,000 bytes. The device is the real
``SyncAgent`` over HTTP with Range resume. Three runs:

- ``delta_real_time``: the nightly 1%-churn delta of a ``--persons`` gallery over the
  true 64 kbit/s link (it is small, so this is what a field site sees each night).
- ``full_small_real_time``: a full bundle scaled down to 1,000 persons over the true
  link, long enough for several cuts and resumes.
- ``full_time_scaled``: the full ``--persons`` bundle, with the link sped up
  ``--scale`` times in both rate and cut interval. Every connection still carries
  240,000 bytes, so the number of cuts and resumes is what the real link would cause,
  in 1/scale of the wall time.

Vectors are random unit vectors: transfer sizes do not depend on their values (no
compression on the wire: Range needs identity encoding).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gallery_factory import Publisher, churn, synthetic_gallery  # noqa: E402
from tests.linkserver import LinkConditions, LinkServer  # noqa: E402

RATE = 8_000  # bytes per second = 64 kbit/s
CUT_S = 30.0


def mean_template(gallery):
    """One row per person, as the builder ships with the 'mean' template."""
    from edge_app.gallery.delta import canonical, group_by_person

    groups = group_by_person(gallery.vectors, gallery.labels)
    rows = {p.person_id: p for p in gallery.persons}
    # A single row is kept bit for bit: re-normalising it would change every unchanged person.
    means = {pid: v if len(v) == 1 else (v.mean(axis=0) / np.linalg.norm(v.mean(axis=0)))[None, :] for pid, v in groups.items()}  # fmt: skip
    return canonical(means, rows, gallery.vectors.shape[1])


def run(publisher: Publisher, device: Path, conditions: LinkConditions, expect: str) -> dict:
    from edge_app.gallery.sync_agent import SyncAgent

    with LinkServer(publisher.root, conditions) as link:
        agent = SyncAgent(link.url, device, publisher.public_key, attempts=8, max_wait=5.0)
        link.stats.body_bytes = 0
        link.stats.cuts = link.stats.requests = link.stats.range_requests = 0
        link.stats.paths.clear()
        started = time.monotonic()
        result = agent.sync_once()
        seconds = time.monotonic() - started
        stats = link.stats
    record = publisher.previous[0]
    bundle_dir = publisher.root / (record.delta.path if expect == "delta" else record.full)
    bundle_bytes = sum(p.stat().st_size for p in bundle_dir.iterdir())
    fetched_kind = {"delta" if "/delta/" in p else "full" if "/full/" in p else "pointer" for p in stats.paths}
    return {
        "completed": result.status == "installed" and agent.version == record.gallery_version,
        "status": result.status,
        "detail": result.detail,
        "bundle": expect,
        "fetched": sorted(fetched_kind),
        "bundle_bytes": bundle_bytes,
        "link_body_bytes": stats.body_bytes,
        "bytes_over_bundle": round(stats.body_bytes / bundle_bytes, 4),
        "connections_cut": stats.cuts,
        "requests": stats.requests,
        "range_requests": stats.range_requests,
        "seconds": round(seconds, 1),
        "effective_bytes_per_second": round(bundle_bytes / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=25_000)
    parser.add_argument("--scale", type=float, default=32.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report: dict = {"link": {"bytes_per_second": RATE, "cut_every_s": CUT_S, "bytes_per_connection": int(RATE * CUT_S)}}
    real_link = LinkConditions(bytes_per_second=RATE, cut_after_seconds=CUT_S)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = mean_template(synthetic_gallery(args.persons, seed=1))
        publisher = Publisher(tmp / "cloud")
        publisher.release(big)
        device = tmp / "device"
        fast = LinkConditions()
        report["seed_full_unlimited_link"] = run(publisher, device, fast, "full")
        publisher.release(mean_template(churn(big, 0.01, seed=2)))
        report["delta_real_time"] = run(publisher, device, real_link, "delta")

        small = Publisher(tmp / "small")
        small.release(mean_template(synthetic_gallery(1_000, seed=3)))
        report["full_small_real_time"] = run(small, tmp / "device-small", real_link, "full")

        scaled = LinkConditions(bytes_per_second=RATE * args.scale, cut_after_seconds=CUT_S / args.scale)
        report["full_time_scaled"] = {"scale": args.scale, **run(publisher, tmp / "device-fresh", scaled, "full")}
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
