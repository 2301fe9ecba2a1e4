"""Lambda entry points of the nightly cycle (the Step Functions tasks in template.yaml).

Three functions, so each carries only the dependencies and permissions its stages need:

- ``ingest_handler`` (``step``: plan | list | fetch | finish): source APIs, the store, the
  shared rate-limit table; no OpenCV.
- ``build_handler``: the face models (OpenCV), the store (read), the build output, the
  signing key (Secrets Manager, read at run time).
- ``publish_handler`` (``step``: publish | prune | outcome): the build output (read), the
  published root, the retained announcement on IoT Core.

Each returns a small JSON document; a stage that cannot finish in one invocation returns
``status: partial`` and the state machine calls it again.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sync_service.cycle import stages
from sync_service.cycle.config import CycleConfig, load_cycle_config

log = logging.getLogger(__name__)
logging.getLogger().setLevel(os.environ.get("MPD_LOG_LEVEL", "INFO"))

_config: CycleConfig | None = None


def config() -> CycleConfig:
    """The cycle configuration, read once per container."""
    global _config
    if _config is None:
        _config = load_cycle_config()
    return _config


def _seconds_left(context: Any) -> float | None:
    return context.get_remaining_time_in_millis() / 1000.0 if context is not None else None


def other_running_executions(state_machine_arn: str, execution_arn: str, client: Any = None) -> int:
    """Executions of this state machine still running, apart from this one."""
    import boto3

    client = client or boto3.client("stepfunctions")
    pages = client.get_paginator("list_executions").paginate(stateMachineArn=state_machine_arn, statusFilter="RUNNING")
    return sum(1 for page in pages for e in page["executions"] if e["executionArn"] != execution_arn)


def ingest_handler(event: dict, context: Any = None) -> dict:
    step = event.get("step")
    if step == "plan":
        others = 0
        if event.get("state_machine") and event.get("execution"):
            others = other_running_executions(event["state_machine"], event["execution"])
        return stages.plan(config(), event, other_runs=others)
    if step == "list":
        return stages.ingest_list(config(), event, _seconds_left(context))
    if step == "fetch":
        return stages.ingest_fetch(config(), event, _seconds_left(context))
    if step == "finish":
        return stages.ingest_finish(config(), event)
    raise ValueError(f"unknown ingest step {step!r}; expected plan, list, fetch or finish")


def build_handler(event: dict, context: Any = None) -> dict:
    result = stages.build(config(), event, _seconds_left(context))
    log.info("gallery build: %s", result)
    return result


def publish_handler(event: dict, context: Any = None) -> dict:
    step = event.get("step")
    if step == "publish":
        return stages.publish_all(config(), event, stages.announcer_for(config()))
    if step == "prune":
        return stages.prune_all(config(), event)
    if step == "outcome":
        return stages.outcome(event)
    raise ValueError(f"unknown publish step {step!r}; expected publish, prune or outcome")
