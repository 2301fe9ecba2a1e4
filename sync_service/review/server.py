"""The review page on one machine: waitress (a production WSGI server) in a thread."""

from __future__ import annotations

import threading

from flask import Flask
from waitress.server import create_server


class ReviewServer:
    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 8080, threads: int = 8) -> None:
        self.server = create_server(app, host=host, port=port, threads=threads, ident="mpd-review")
        self.port = self.server.effective_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.server.run, name="review-page", daemon=True)

    def start(self) -> ReviewServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.close()
