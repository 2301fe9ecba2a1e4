"""The health gate: tell the nucleus a new release is up only once its pipeline is healthy.

The application component starts through its recipe's ``Startup`` step, so the nucleus
holds the component in STARTING (and the deployment IN_PROGRESS) until the component
reports RUNNING over IPC (``UpdateState``). ``await_healthy`` reports RUNNING once a health
report written by the pipeline (``health_file``) shows frames processed, and ERRORED when
the deadline passes without one. Three errors make the component BROKEN, which fails the
deployment, and ``failureHandlingPolicy: ROLLBACK`` restores the previous release.

A release that has been healthy on this device once leaves a marker and passes at once
afterwards, so a camera that is down at a later restart (a power cut, a nucleus restart)
never makes a proven release BROKEN, and a rollback to it needs no camera either.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

RUNNING, ERRORED = "RUNNING", "ERRORED"


class HealthGateError(RuntimeError):
    """The component state could not be reported to the nucleus."""


def frames_in(health_file: Path, newer_than: float) -> int:
    """Frames processed according to ``health_file`` if it was written after ``newer_than``."""
    try:
        if health_file.stat().st_mtime < newer_than:
            return 0
        report = json.loads(health_file.read_text())
        return int(report.get("detail", {}).get("frames", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0  # not there yet, or half-read: try again at the next poll


def await_healthy(
    health_file: Path,
    marker: Path,
    deadline_s: float,
    report: Callable[[str], None],
    *,
    poll_s: float = 1.0,
    still_wanted: Callable[[], bool] = lambda: True,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Report RUNNING when the pipeline is healthy (True), ERRORED after ``deadline_s`` (False).

    ``still_wanted`` returning False (the pipeline this gate watched is gone) ends the wait
    without a report: the nucleus already knows, from the process exit.
    """
    if marker.exists():
        log.info("health gate: release %s was healthy here before; RUNNING", marker.name)
        report(RUNNING)
        return True
    started_wall = time.time() - 1.0  # a report written in the same second counts
    end = clock() + deadline_s
    while clock() < end:
        if not still_wanted():
            log.info("health gate: the pipeline is gone; no report")
            return False
        frames = frames_in(health_file, started_wall)
        if frames > 0:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"healthy_at": time.time(), "frames": frames}) + "\n")
            log.info("health gate: %d frames processed; RUNNING", frames)
            report(RUNNING)
            return True
        time.sleep(poll_s)
    log.error("health gate: no health report with frames processed within %.0f s; ERRORED", deadline_s)
    report(ERRORED)
    return False


def ipc_reporter(timeout_s: float = 10.0) -> Callable[[str], None]:
    """``report(state)`` over the nucleus IPC socket (UpdateState needs no access policy)."""
    from edge_app.ipc_config import NUCLEUS_ENV, running_under_greengrass

    if not running_under_greengrass():
        missing = [name for name in NUCLEUS_ENV if not os.environ.get(name)]
        raise HealthGateError(f"not running as a Greengrass v2 component ({', '.join(missing)} not set)")
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
    from awsiot.greengrasscoreipc.model import ReportedLifecycleState

    def report(state: str) -> None:
        try:
            client = GreengrassCoreIPCClientV2()
            try:
                client.update_state_async(state=getattr(ReportedLifecycleState, state)).result(timeout_s)
            finally:
                client.close()
        except Exception as error:  # the socket refused us, the nucleus is stopping
            raise HealthGateError(f"cannot report {state} to the nucleus: {error}") from None

    return report
