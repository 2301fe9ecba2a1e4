"""Peak memory of a child process, for the tests and benchmarks that re-run memory attacks."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path


def run_measuring_peak_rss(command: list[str], **popen) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``command``; return its result and its peak resident memory in MB.

    The peak is the kernel's high-water mark of the process's own memory (``VmHWM`` in
    ``/proc/PID/status``), read every 10 ms until it exits. ``wait4``'s ``ru_maxrss`` is
    no good here: Linux carries the parent's RSS at fork over into the child's figure.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    status, peak_kb = Path(f"/proc/{process.pid}/status"), 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_kb
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
            except (OSError, ValueError):  # exited (or a zombie with no memory left)
                pass
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    done.set()
    sampler.join()
    return subprocess.CompletedProcess(command, process.returncode, out, err), peak_kb / 1024
