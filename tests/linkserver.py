"""A real local HTTP server standing in for a poor field uplink.

Serves a directory over HTTP/1.1 with single-range ``Range`` requests (206), a
bandwidth cap, and connections cut mid-body after a number of seconds or bytes,
the way a flaky cellular link drops them. Counts every body byte it sends, so a
test or benchmark can report bytes transferred / bundle size.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class LinkConditions:
    bytes_per_second: float | None = None  # None: unlimited
    cut_after_seconds: float | None = None  # drop each connection after this long sending
    cut_after_bytes: int | None = None  # or after this many body bytes
    honour_range: bool = True  # False: answer every request with the whole file (200)
    chunk: int = 4096
    # A hostile server: after each file's body, this many more junk bytes, with no
    # Content-Length (the body ends when the connection closes), as for an endless stream.
    extra_body_bytes: int = 0
    # When set, the conditions above apply only to paths ending with this ("vectors.npy");
    # every other file is served plainly.
    only_suffix: str | None = None


@dataclass
class LinkStats:
    body_bytes: int = 0
    requests: int = 0
    range_requests: int = 0
    cuts: int = 0
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


class LinkServer:
    """``with LinkServer(root, LinkConditions(...)) as link: link.url`` serves ``root``."""

    def __init__(self, root: Path, conditions: LinkConditions | None = None) -> None:
        self.root = Path(root).resolve()
        self.conditions = conditions or LinkConditions()
        self.stats = LinkStats()
        self.open_connections: set = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def setup(self) -> None:
                super().setup()
                with server.stats.lock:
                    server.open_connections.add(self.connection)

            def finish(self) -> None:
                with server.stats.lock:
                    server.open_connections.discard(self.connection)
                super().finish()

            def do_HEAD(self) -> None:
                self._serve(send_body=False)

            def do_GET(self) -> None:
                self._serve(send_body=True)

            def _serve(self, send_body: bool) -> None:
                server.stats.add(requests=1)
                with server.stats.lock:
                    server.stats.paths.append(self.path)
                relative = unquote(urlsplit(self.path).path).lstrip("/")
                path = (server.root / relative).resolve()
                if server.root not in path.parents or not path.is_file():
                    self._plain(404, b"not found\n")
                    return
                size = path.stat().st_size
                conditions = server.conditions
                if conditions.only_suffix and not relative.endswith(conditions.only_suffix):
                    conditions = LinkConditions(honour_range=conditions.honour_range)
                start, end, status = 0, size - 1, 200
                requested = self.headers.get("Range")
                if requested and conditions.honour_range:
                    match = RANGE.match(requested.strip())
                    if not match or int(match.group(1)) >= max(size, 1):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                    status = 206
                    server.stats.add(range_requests=1)
                self.send_response(status)
                if conditions.extra_body_bytes:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(end - start + 1))
                self.send_header("Accept-Ranges", "bytes" if conditions.honour_range else "none")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                self.end_headers()
                if send_body:
                    self._send_body(path, start, end - start + 1, conditions)
                    if conditions.extra_body_bytes:
                        self._send_junk(conditions.extra_body_bytes)

            def _send_junk(self, count: int) -> None:
                block = b"\x00" * 65536
                while count > 0:
                    try:
                        self.wfile.write(block[:count])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    server.stats.add(body_bytes=min(count, len(block)))
                    count -= len(block)

            def _send_body(self, path: Path, start: int, length: int, conditions: LinkConditions) -> None:
                began, sent = time.monotonic(), 0
                with open(path, "rb") as handle:
                    handle.seek(start)
                    while sent < length:
                        block = handle.read(min(conditions.chunk, length - sent))
                        if conditions.cut_after_bytes is not None:
                            block = block[: max(0, conditions.cut_after_bytes - sent)]
                        elapsed = time.monotonic() - began
                        if not block or (conditions.cut_after_seconds and elapsed >= conditions.cut_after_seconds):
                            self._cut()
                            return
                        try:
                            self.wfile.write(block)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        sent += len(block)
                        server.stats.add(body_bytes=len(block))
                        if conditions.bytes_per_second:
                            # Pace to the cap: sleep until this many bytes are "due".
                            due = began + sent / conditions.bytes_per_second
                            time.sleep(max(0.0, due - time.monotonic()))

            def _cut(self) -> None:
                server.stats.add(cuts=1)
                self.close_connection = True
                try:
                    self.wfile.flush()
                    self.connection.shutdown(2)
                except OSError:
                    pass

            def _plain(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> LinkServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        # Kept-alive connections too: after this the link is down, not half up.
        with self.stats.lock:
            connections = list(self.open_connections)
        for connection in connections:
            try:
                connection.shutdown(2)
            except OSError:
                pass
