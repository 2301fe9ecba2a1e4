"""The cycle on one machine: the state machine's flow over the same stage functions, and a
scheduler on a clock that can run faster than real time (``mpd cloud cycle``/``serve``).

Sources are ingested in parallel and each source's shards in parallel (threads), as the
state machine's Map states do; a stage answering ``partial`` is called again, as its
Choice loop does; a source that fails is recorded and the build goes on with what the
store holds, as the state machine's Catch does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sync_service.cycle import stages
from sync_service.cycle.config import CycleConfig

log = logging.getLogger(__name__)

MAX_LOOPS = 10_000  # a stage that answers "partial" forever is a bug, not a long night


def _loop(call: Callable[[], dict]) -> dict:
    for _ in range(MAX_LOOPS):
        result = call()
        if result.get("status") != "partial":
            return result
    raise RuntimeError(f"stage still partial after {MAX_LOOPS} calls")


def ingest_source(config: CycleConfig, item: dict, seconds_per_call: float | None = None) -> dict:
    """List, fetch every shard in parallel, finish: one source's branch of the Map state."""
    try:
        listed = _loop(lambda: stages.ingest_list(config, {**item, "step": "list"}, seconds_per_call))
        if listed.get("status") == "listed":
            with ThreadPoolExecutor(max_workers=len(item["shards"]), thread_name_prefix=f"ingest-{item['source']}") as pool:  # fmt: skip
                futures = [
                    pool.submit(_loop, lambda s=s: stages.ingest_fetch(config, {**item, **s}, seconds_per_call))
                    for s in item["shards"]
                ]
                for future in futures:
                    future.result()
        return stages.ingest_finish(config, item)
    except Exception as error:  # the state machine's Catch: record, and build from what is stored
        log.exception("ingest of %s failed", item["source"])
        return {"source": item["source"], "status": "failed", "error": f"{type(error).__name__}: {error}"[:500]}


def run_cycle(
    config: CycleConfig,
    now: datetime | None = None,
    *,
    announcer=None,
    models=None,
    key=None,
    seconds_per_call: float | None = None,
    ingest: bool = True,
) -> dict:
    """One whole cycle. ``seconds_per_call`` imitates Lambda's time limit (None: no limit)."""
    now = now or datetime.now(UTC)
    state: dict = {"now": now.isoformat()}
    state["plan"] = stages.plan(config, {"now": now.isoformat()})
    if ingest:
        with ThreadPoolExecutor(max_workers=max(1, len(state["plan"]["sources"]))) as pool:
            state["ingest"] = list(pool.map(lambda item: ingest_source(config, item, seconds_per_call), state["plan"]["sources"]))  # fmt: skip
    else:
        state["ingest"] = []
    try:
        state["build"] = _loop(lambda: stages.build(config, state, seconds_per_call, models=models, key=key))
        state["publish"] = stages.publish_all(config, state, announcer)
        state["prune"] = stages.prune_all(config, state)
    except Exception as error:  # a failed stage: the live gallery is untouched; the cycle alarms
        log.exception("cycle stage failed")
        state["outcome"] = {"ok": False, "problems": [f"{type(error).__name__}: {error}"[:500]]}
        return state
    state["outcome"] = stages.outcome(state)
    return state


class SimulatedClock:
    """Wall time sped up ``speed`` times from ``start`` (speed 1: real time)."""

    def __init__(self, start: datetime | None = None, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError(f"clock speed must be positive, got {speed}")
        self.start = start or datetime.now(UTC)
        self.speed = speed
        self._t0 = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=(time.monotonic() - self._t0) * self.speed)

    def sleep_until(self, moment: datetime, stop: threading.Event) -> bool:
        """Wait until simulated ``moment``; False if ``stop`` was set first."""
        while not stop.is_set():
            left = (moment - self.now()).total_seconds() / self.speed
            if left <= 0:
                return True
            stop.wait(min(left, 1.0))
        return False


def next_run(after: datetime, every: timedelta, at_hour: float = 3.0) -> datetime:
    """The first scheduled time after ``after``: ``at_hour`` UTC, then every ``every``."""
    base = after.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(hours=at_hour)
    while base <= after:
        base += every
    while base - every > after:
        base -= every
    return base


class CycleScheduler(threading.Thread):
    """Runs ``run_cycle`` at each scheduled (simulated) time, one at a time, until stopped."""

    def __init__(
        self,
        config: CycleConfig,
        clock: SimulatedClock,
        *,
        at_hour: float = 3.0,
        on_result: Callable[[dict], None] | None = None,
        run_now: bool = False,
        **cycle_kwargs,
    ) -> None:
        super().__init__(name="cycle-scheduler", daemon=True)
        self.config, self.clock, self.at_hour = config, clock, at_hour
        self.on_result = on_result
        self.run_now = run_now
        self.cycle_kwargs = cycle_kwargs
        self.stop_event = threading.Event()
        self.results: list[dict] = []

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        every = timedelta(hours=self.config.cycle_hours)
        moment = self.clock.now() if self.run_now else next_run(self.clock.now(), every, self.at_hour)
        while self.clock.sleep_until(moment, self.stop_event):
            result = run_cycle(self.config, moment, **self.cycle_kwargs)
            self.results.append(result)
            if self.on_result:
                self.on_result(result)
            moment = next_run(max(moment, self.clock.now()), every, self.at_hour)
