"""The cycle's ingest, fanned out: list once, fetch in shards, finish once, per source.

A full NamUs crawl (~25,000 cases, two or more requests each at 1 request/s) takes far
longer than one Lambda's 15 minutes, so the work is cut three ways:

1. ``list_source``: the listing partitions (NamUs states), checkpointed per partition.
2. ``fetch_shard``: shard i of N takes the listed cases whose id hashes to i, and stops
   before its deadline with its finished cases checkpointed; called again, it resumes.
   The N shards share one rate limiter (``ratelimit``), so together they stay within the
   source's polite rate. A case belongs to exactly one shard, so no two workers ever write
   the same case (and a case listed in several states keeps all of them).
3. ``finish_source``: vanished cases are marked removed only when every shard completed a
   complete listing; the summary goes to ``state/last-run-{source}.json``.

Checkpoints live in the store under ``state/cycle/{source}/`` keyed by the cycle's run id;
a new cycle starts a fresh listing (cases already stored and unchanged cost no request).
The night's ingest budget (``ingest_until``) stops shards for good ("stopped"): the build
then runs on what is stored, and the next night carries on.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from sync_service.cycle.config import CycleConfig, SourceSettings
from sync_service.http import HttpError
from sync_service.ingest.engine import Ingest, IngestSummary, SourceDown
from sync_service.store import Store

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 2.0
MAX_FAILURES_IN_A_ROW = 5


@dataclass
class Deadline:
    """Stop this invocation at ``soft`` (resume later); stop the night's ingest at ``hard``."""

    soft: float  # time.time()
    hard: float  # time.time()

    def reached(self) -> str | None:
        now = time.time()
        if now >= self.hard:
            return "stopped"
        if now >= self.soft:
            return "partial"
        return None


def shard_of(case_id: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:8], "big") % shards


def make_ingest(source: str, settings: SourceSettings, store: Store, limiter=None) -> Ingest:
    from sync_service.http import PoliteClient
    from sync_service.ingest.cli import DEFAULT_URLS
    from sync_service.sources import make_adapter

    client = PoliteClient(
        settings.rate_limit,
        read_timeout=settings.timeout_s,
        max_attempts=settings.retries + 1,
        allow_loopback=settings.allow_loopback or None,  # None: $MPD_SOURCES_ALLOW_LOOPBACK decides
    )
    if limiter is not None:
        client.limiter = limiter  # the source's shared slots, not a private limiter
    adapter = make_adapter(source, settings.base_url or DEFAULT_URLS[source], client=client)
    if settings.all_photo_categories and source == "namus":
        adapter.categories = None  # type: ignore[attr-defined]
    return Ingest(adapter, store, scopes=settings.states or None, checkpoint_seconds=CHECKPOINT_SECONDS)


def _prefix(source: str) -> str:
    return f"state/cycle/{source}/"


def _listing(store: Store, source: str, run_id: str) -> dict | None:
    listing = store.read_json(_prefix(source) + "listing.json")
    return listing if listing and listing.get("run_id") == run_id else None


def list_source(config: CycleConfig, source: str, store: Store, run_id: str, deadline: Deadline, limiter=None) -> dict:
    """List the source's partitions (resuming this run's listing). Raises ``SourceDown`` if none answers."""
    settings = config.sources[source]
    engine = make_ingest(source, settings, store, limiter)
    listing = _listing(store, source, run_id) or {"run_id": run_id, "scopes": None, "pages": {}, "incomplete": {}}
    listing["errors"] = {}
    if listing["scopes"] is None:
        listing["scopes"] = engine.adapter.list_scopes(engine.wanted_scopes)
        store.write_json(_prefix(source) + "listing.json", listing)
    for scope in listing["scopes"]:
        if scope in listing["pages"]:
            continue
        stop = deadline.reached()
        if stop:
            store.write_json(_prefix(source) + "listing.json", listing)
            return {"source": source, "status": stop, "listed": len(listing["pages"]), "of": len(listing["scopes"])}
        try:
            listing["pages"][scope] = [s.model_dump(mode="json") for s in engine.adapter.list_scope(scope)]
        except HttpError as error:
            log.error("listing %s %s failed: %s", source, scope or "(all)", error)
            listing["errors"][scope] = str(error)
            continue
        if scope in engine.adapter.incomplete:
            listing["incomplete"][scope] = engine.adapter.incomplete[scope]
        store.write_json(_prefix(source) + "listing.json", listing)
    store.write_json(_prefix(source) + "listing.json", listing)
    if listing["scopes"] and not listing["pages"]:
        raise SourceDown(f"{source}: every listing request failed (first: {next(iter(listing['errors'].values()))})")
    cases = Ingest._merge(listing)
    return {"source": source, "status": "listed", "cases": len(cases), "errors": len(listing["errors"])}


def fetch_shard(
    config: CycleConfig,
    source: str,
    store: Store,
    run_id: str,
    shard: int,
    shards: int,
    deadline: Deadline,
    limiter=None,
) -> dict:
    """Fetch shard ``shard`` of ``shards`` of this run's listed cases, resuming its checkpoint."""
    listing = _listing(store, source, run_id)
    if listing is None:
        raise RuntimeError(f"{source}: no listing for run {run_id}; list_source must run first")
    engine = make_ingest(source, config.sources[source], store, limiter)
    key = f"{_prefix(source)}shard-{shard}-of-{shards}.json"
    progress = store.read_json(key)
    if progress and progress.get("run_id") == run_id:
        done, summary = set(progress["done"]), IngestSummary.from_json(progress["summary"])
    else:
        done, summary = set(), IngestSummary(source)
    mine = {cid: row for cid, row in Ingest._merge(listing).items() if shard_of(cid, shards) == shard}
    status, failures, last_save = "done", 0, time.monotonic()

    def save() -> None:
        store.write_json(key, {"run_id": run_id, "done": sorted(done), "summary": summary.to_json()})

    requests_before = engine.adapter.client.stats.requests
    try:
        for case_id, (row, scopes) in mine.items():
            if case_id in done:
                continue
            stop = deadline.reached()
            if stop:
                status = stop
                break
            try:
                engine._ingest_case(row, scopes, summary)
                failures = 0
                summary.fetch_failed.pop(case_id, None)
            except HttpError as error:
                failures += 1
                summary.fetch_failed[case_id] = str(error)
                log.error("%s case %s: fetch failed, skipped: %s", source, case_id, error)
                if failures >= MAX_FAILURES_IN_A_ROW:
                    raise SourceDown(f"{source} failed {failures} cases in a row (last: {error})") from None
                continue
            done.add(case_id)
            if time.monotonic() - last_save >= CHECKPOINT_SECONDS:
                save()
                last_save = time.monotonic()
    finally:
        summary.requests += engine.adapter.client.stats.requests - requests_before
        save()
    remaining = sum(1 for cid in mine if cid not in done)
    if status == "done" and remaining:
        status = "incomplete"  # some cases failed to fetch; the finish step will not judge vanished cases
    return {"source": source, "shard": shard, "status": status, "remaining": remaining, "cases": len(mine)}


def finish_source(config: CycleConfig, source: str, store: Store, run_id: str, shards: int) -> dict[str, Any]:
    """Merge the shards' summaries; mark vanished cases only after a complete crawl; clear checkpoints."""
    listing = _listing(store, source, run_id)
    if listing is None:
        return {"source": source, "status": "no listing", "complete": False}
    engine = make_ingest(source, config.sources[source], store)
    total = IngestSummary(source)
    complete = not listing.get("errors") and set(listing["pages"]) == set(listing["scopes"] or [])
    cases = Ingest._merge(listing)
    for shard in range(shards):
        progress = store.read_json(f"{_prefix(source)}shard-{shard}-of-{shards}.json")
        if not progress or progress.get("run_id") != run_id:
            complete = False
            continue
        part = IngestSummary.from_json(progress["summary"])
        mine = [cid for cid in cases if shard_of(cid, shards) == shard]
        complete = complete and all(cid in set(progress["done"]) for cid in mine)
        _add(total, part)
    total.cases_seen = len(cases)
    total.listing_errors = dict(listing.get("errors", {}))
    total.listing_incomplete = dict(listing.get("incomplete", {}))
    if complete:
        engine._mark_vanished(listing, cases, total)
    else:
        total.vanished_check = "vanished cases not checked (the crawl did not complete this cycle)"
    store.write_json(f"state/last-run-{source}.json", total.to_json())
    for key in list(store.list_keys(_prefix(source))):
        store.delete(key)
    result = total.to_json()
    result.update({"status": "complete" if complete else "incomplete", "complete": complete})
    return result


def _add(total: IngestSummary, part: IngestSummary) -> None:
    for name in ("new", "changed", "unchanged", "photos_stored", "photos_kept", "requests"):
        setattr(total, name, getattr(total, name) + getattr(part, name))
    total.removed.update(part.removed)
    total.photos_rejected.update(part.photos_rejected)
    total.not_found += part.not_found
    total.malformed.update(part.malformed)
    total.fetch_failed.update(part.fetch_failed)
