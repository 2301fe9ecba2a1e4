"""The stages of the nightly cycle, one function each: event dict in, small JSON-able dict out.

The Step Functions state machine in template.yaml calls them through the Lambda handlers in
``handlers``; ``runner.run_cycle`` calls the same functions in the same order on one machine.

    plan -> per source: list -> fetch shards (in parallel) -> finish
         -> build (all scopes; loops while "partial") -> publish (each scope) -> prune -> outcome

Every stage is idempotent and restartable: ingest resumes from its checkpoints, the build
from its embedding cache and build records, publish leaves a version already live as it
is, prune deletes only what the live pointer does not name. A stage that fails leaves the
published gallery untouched (the pointer is written last, by publish, and only for a
build the devices can load).

Events carry ``run_id`` and ``now`` (the cycle's clock: the execution start in AWS, any
time in a local simulation) so versions, retention and deadlines follow one clock.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sync_service.cycle.config import CycleConfig
from sync_service.cycle.ingest import Deadline, fetch_shard, finish_source, list_source
from sync_service.cycle.ratelimit import shared_limiter
from sync_service.cycle.scopes import ScopeFilter, announce_topic
from sync_service.store import open_store

log = logging.getLogger(__name__)

LAMBDA_SAFETY_S = 60.0  # an ingest or publish invocation stops this long before its deadline
BUILD_SAFETY_S = 120.0  # the build needs longer to write bundles after it stops embedding


def cycle_now(event: dict) -> datetime:
    value = event.get("now")
    if not value:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- plan -------------------------------------------------------------------------------


def plan(config: CycleConfig, event: dict, *, other_runs: int = 0) -> dict:
    """What this cycle will do: the sources and their shards, the ingest budget, the scopes."""
    now = cycle_now(event)
    run_id = str(event.get("run_id") or now.strftime("%Y%m%dT%H%M%SZ"))
    if other_runs:
        # A first full crawl can outlast the night; never run two cycles over one store.
        return {"run_id": run_id, "skip": True, "reason": f"{other_runs} other cycle(s) still running"}
    until = time.time() + config.ingest_budget_s
    sources = [
        {"source": name, "run_id": run_id, "ingest_until": until, "now": now.isoformat(),
         "shards": [{"shard": i, "of": s.workers} for i in range(s.workers)]}
        for name, s in config.sources.items()
    ]  # fmt: skip
    return {
        "run_id": run_id,
        "now": now.isoformat(),
        "skip": False,
        "ingest_until": until,
        "sources": sources,
        "scopes": [s.name for s in config.all_scopes()],
    }


# --- ingest -------------------------------------------------------------------------------


def _deadline(event: dict, seconds_left: float | None, safety: float = LAMBDA_SAFETY_S) -> Deadline:
    hard = float(event.get("ingest_until") or time.time() + 1e9)
    soft = time.time() + max(1.0, seconds_left - safety) if seconds_left is not None else hard
    return Deadline(soft=min(soft, hard), hard=hard)


def ingest_list(config: CycleConfig, event: dict, seconds_left: float | None = None) -> dict:
    source = event["source"]
    limiter = shared_limiter(source, config.sources[source].rate_limit)
    store = open_store(config.store)
    return list_source(config, source, store, event["run_id"], _deadline(event, seconds_left), limiter)


def ingest_fetch(config: CycleConfig, event: dict, seconds_left: float | None = None) -> dict:
    source = event["source"]
    limiter = shared_limiter(source, config.sources[source].rate_limit)
    store = open_store(config.store)
    deadline = _deadline(event, seconds_left)
    return fetch_shard(config, source, store, event["run_id"], int(event["shard"]), int(event["of"]), deadline, limiter)


def ingest_finish(config: CycleConfig, event: dict) -> dict:
    source = event["source"]
    shards = config.sources[source].workers
    summary = finish_source(config, source, open_store(config.store), event["run_id"], shards)
    keep = ("status", "complete", "cases_seen", "new", "changed", "unchanged", "requests", "vanished_check")
    compact = {key: summary.get(key) for key in keep}
    compact["removed"] = sum((summary.get("removed") or {}).values())
    compact["source"] = source
    return compact


# --- build --------------------------------------------------------------------------------


def build(config: CycleConfig, event: dict, seconds_left: float | None = None, models=None, key=None) -> dict:
    """Embed what is new and write every scope's gallery; ``status: partial`` means call again."""
    from sync_service.gallery.nightly import BuildScope, NightlyBuilder

    if models is None:
        from models.recognizer import FaceModels

        models = FaceModels.load()
    if key is None:
        from sync_service.gallery.signing import load_private_key

        key = load_private_key()
    retention = timedelta(days=config.retention_days)
    scopes = [
        BuildScope(s.name, None if s.name == "all" else ScopeFilter.of(s), retention) for s in config.all_scopes()
    ]
    deadline = time.monotonic() + max(1.0, seconds_left - BUILD_SAFETY_S) if seconds_left is not None else None
    builder = NightlyBuilder(open_store(config.store), open_store(config.build), models, key.sign, key.public_key())
    result = builder.run(deadline=deadline, now=cycle_now(event), scopes=scopes)
    return {
        "status": result.status,
        "embedded": result.embedded,
        "remaining": result.remaining,
        "skipped_photos": len(result.skipped),
        "scopes": result.scopes,
    }


# --- publish ------------------------------------------------------------------------------


def publish_all(config: CycleConfig, event: dict, announcer=None) -> dict:
    """Publish every scope's newest build its devices can load, pointer last, then announce."""
    from sync_service.gallery.publish import PublishError, publish

    now = cycle_now(event)
    built = (event.get("build") or {}).get("scopes") or {}
    results: dict[str, dict] = {}
    for scope in config.all_scopes():
        if built.get(scope.name, {}).get("status") == "refused":
            results[scope.name] = {"status": "not built", "error": built[scope.name].get("error", "")}
            continue
        try:
            pointer = publish(config.build, config.published, scope.name, config.devices, now=now)
        except PublishError as error:
            log.error("publish %s refused: %s", scope.name, error)
            results[scope.name] = {"status": "refused", "error": str(error)}
            continue
        entry = {"status": "published", "version": pointer.gallery_version}
        if announcer is not None:
            try:
                announcer(announce_topic(scope.name), pointer.to_json())
                entry["announced"] = True
            except Exception as error:  # the pointer is live; devices find it at their next poll
                log.error("announcement of %s failed: %s", scope.name, error)
                entry["announced"] = False
                entry["announce_error"] = str(error)[:300]
        results[scope.name] = entry
    return {"scopes": results}


def announcer_for(config: CycleConfig):
    """How this deployment announces: IoT Core's data plane (retained), a broker, or not at all."""
    settings = config.announce
    if settings.via == "iot":
        import os

        import boto3

        endpoint = None
        if not os.environ.get("AWS_ENDPOINT_URL"):  # (moto answers at its own URL)
            address = boto3.client("iot").describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
            endpoint = f"https://{address}"
        client = boto3.client("iot-data", endpoint_url=endpoint)
        return lambda topic, payload: client.publish(topic=topic, qos=1, retain=True, payload=payload.encode())
    if settings.via == "mqtt":
        from edge_app.gallery.pointer import LatestPointer
        from sync_service.gallery.publish import announce

        def send(topic: str, payload: str) -> None:
            pointer = LatestPointer.parse(payload, "announcement")
            announce(pointer, settings.host, settings.port, settings.ca, settings.cert, settings.key, topic=topic)

        return send
    return None


# --- prune and outcome --------------------------------------------------------------------


def prune_all(config: CycleConfig, event: dict) -> dict:
    from sync_service.gallery.prune import prune

    now = cycle_now(event)
    build, dest = open_store(config.build), open_store(config.published)
    retention = timedelta(days=config.retention_days)
    results = {s.name: prune(build, dest, now, retention, s.name).as_dict() for s in config.all_scopes()}
    return {"scopes": results}


def outcome(event: dict) -> dict[str, Any]:
    """Whether the cycle did everything: a failed source, a refused scope or a failed announcement
    makes the execution fail (and alarm) even though the good parts were published."""
    problems = []
    for item in event.get("ingest") or []:
        status = item.get("status")
        if status not in ("complete", "incomplete"):
            problems.append(f"ingest {item.get('source')}: {item.get('error') or status}")
        elif status == "incomplete" and item.get("vanished_check", "").startswith("vanished cases not checked"):
            log.warning("ingest %s incomplete this cycle: %s", item.get("source"), item.get("vanished_check"))
    for name, result in ((event.get("build") or {}).get("scopes") or {}).items():
        if result.get("status") == "refused":
            problems.append(f"build {name}: {result.get('error')}")
    for name, result in ((event.get("publish") or {}).get("scopes") or {}).items():
        if result.get("status") != "published":
            problems.append(f"publish {name}: {result.get('error') or result.get('status')}")
        elif result.get("announced") is False:
            problems.append(f"announce {name}: {result.get('announce_error')}")
    return {"ok": not problems, "problems": problems}
