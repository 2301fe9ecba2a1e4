"""The embedded defaults: one JSON message per line on stdout, or appended to a file."""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import TextIO

from edge_app.publishers import PublishError


class StdoutPublisher:
    """One JSON object per line: ``{"topic": ..., "message": {...}}``."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: str, key: str) -> None:
        line = json.dumps({"topic": topic, "message": json.loads(payload)}, separators=(",", ":"))
        stream = self.stream or sys.stdout
        try:
            with self._lock:
                stream.write(line + "\n")
                stream.flush()
        except (OSError, ValueError) as error:  # closed pipe or closed stream
            raise PublishError(f"stdout: {error}") from None

    def close(self) -> None:
        pass


class FilePublisher:
    """Appends one JSON line per message and fsyncs it, so "sent" means "on disk"."""

    name = "file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def publish(self, topic: str, payload: str, key: str) -> None:
        line = json.dumps({"topic": topic, "message": json.loads(payload)}, separators=(",", ":")) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as error:
            raise PublishError(f"file {self.path}: {error.strerror or error}") from None

    def close(self) -> None:
        pass
