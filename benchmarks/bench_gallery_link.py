"""Gallery download and Greengrass releases over a poor link: does it complete, and how
many bytes cross the link; JSON on stdout.

    python benchmarks/bench_gallery_link.py [--persons 25000] [--scale 32] [--out FILE]
    python benchmarks/bench_gallery_link.py --releases WORK [--scale 32] [--out FILE]

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

``--releases WORK`` measures software updates instead: it packages (once; kept in WORK)
release N, N+1 with a code change only, and N+1 with a dependency bump (tenacity held
below 9.2, which changes the lock), and for each platform moves what a device downloads
(``download-plan.json``: only components whose version changed) over the same link, with
Range resume as the nucleus's downloader does: the first install of N, N -> N+1 code-only
in real time, and N -> N+1 dependency bump time-scaled like ``full_time_scaled``.
"""

from __future__ import annotations

import argparse
import json
import os
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


def transfer(root: Path, files: list[tuple[str, int]], conditions: LinkConditions, scale: float = 1.0) -> dict:
    """Download ``files`` (path under ``root``, size) over the link, resuming after each cut."""
    from edge_app.gallery.transports import RETRYABLE, HttpSource

    with tempfile.TemporaryDirectory() as tmp, LinkServer(root, conditions) as link:
        source = HttpSource(link.url)
        started = time.monotonic()
        for index, (relpath, size) in enumerate(files):
            dest = Path(tmp) / str(index)
            while not dest.exists() or dest.stat().st_size < size:
                try:
                    source.download(relpath, dest, size)
                except RETRYABLE:
                    time.sleep(0.05)
        seconds = time.monotonic() - started
        stats = link.stats
    total = sum(size for _, size in files)
    return {
        "files": [relpath for relpath, _ in files],
        "bytes": total,
        "link_body_bytes": stats.body_bytes,
        "connections_cut": stats.cuts,
        "requests": stats.requests,
        "seconds": round(seconds, 1),
        "seconds_at_64_kbit": round(seconds * scale, 1),
    }


def package_releases(work: Path) -> dict[str, Path]:
    """Release N, N+1 (code only) and N+1 (dependency bump), packaged once into ``work``."""
    import shutil

    from greengrass import packaging

    outs = {"N": work / "N", "N+1 code": work / "N+1-code", "N+1 deps": work / "N+1-deps"}
    if not (outs["N"] / "release.json").exists():
        packaging.package("1.0.0", outs["N"], bucket="mpd-bench")
    previous = outs["N"] / "release.json"
    if not (outs["N+1 code"] / "release.json").exists():
        source = work / "src-code"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(packaging.REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build"))  # fmt: skip
        with open(source / "edge_app" / "health.py", "a") as handle:
            handle.write("\n# a one-line fix\n")
        packaging.package("1.0.1", outs["N+1 code"], bucket="mpd-bench", previous=previous, source=source)
    if not (outs["N+1 deps"] / "release.json").exists():
        source = work / "src-deps"
        shutil.rmtree(source, ignore_errors=True)
        shutil.copytree(packaging.REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build"))  # fmt: skip
        setup = (source / "setup.py").read_text()
        (source / "setup.py").write_text(setup.replace('"tenacity>=8.2,<10"', '"tenacity>=8.2,<9.2"'))
        packaging.package("1.0.1", outs["N+1 deps"], bucket="mpd-bench", previous=previous, source=source)
    return outs


def releases(work: Path, scale: float) -> dict:
    outs = package_releases(work)
    real_link = LinkConditions(bytes_per_second=RATE, cut_after_seconds=CUT_S)
    scaled = LinkConditions(bytes_per_second=RATE * scale, cut_after_seconds=CUT_S / scale)
    report: dict = {}
    for platform in ("linux-aarch64", "linux-x86_64"):
        rows = {}
        for name, out, previous, conditions, factor in (
            ("first_install_time_scaled", outs["N"], None, scaled, scale),
            ("code_only_real_time", outs["N+1 code"], outs["N"], real_link, 1.0),
            ("dependency_bump_time_scaled", outs["N+1 deps"], outs["N"], scaled, scale),
        ):
            release = json.loads((out / "release.json").read_text())
            before = json.loads((previous / "release.json").read_text()) if previous else None
            from greengrass.packaging import download_plan

            plan = download_plan(before, release)[platform]
            files = []
            for item in plan["components"]:
                if item["bytes"]:
                    artifacts = release["components"][item["component"]]["artifacts"]
                    artifact = artifacts.get(platform) or artifacts["all"]
                    files.append((f"artifacts/{artifact['key']}", artifact["bytes"]))
            rows[name] = {"versions": {c: v["version"] for c, v in release["components"].items()}, "scale": factor,
                          **transfer(out, files, conditions, factor)}  # fmt: skip
        report[platform] = rows
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--persons", type=int, default=25_000)
    parser.add_argument("--scale", type=float, default=32.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--releases", type=Path, metavar="WORK", help="Measure Greengrass releases instead (see above)."
    )
    args = parser.parse_args()
    report: dict = {"link": {"bytes_per_second": RATE, "cut_every_s": CUT_S, "bytes_per_connection": int(RATE * CUT_S)}}
    if args.releases:
        report["load_average"] = os.getloadavg()
        report["releases"] = releases(args.releases, args.scale)
        text = json.dumps(report, indent=2)
        print(text)
        if args.out:
            args.out.write_text(text + "\n")
        return
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
