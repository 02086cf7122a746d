"""What the stand-in workers share (``bench/busy_worker.py``, ``tests/e2e/canary_worker.py``):
JSON answers, the readiness and stats routes, the counts they report, and a SIGTERM that
stops accepting and lets the requests held finish. Standard library only: they start in
a fraction of a second, as many times as a test needs them."""

from __future__ import annotations

import collections
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Counts", "JsonHandler", "serve_until_sigterm"]


class Counts:
    """Requests in flight, served, and when each was served (for the recent throughput)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight = 0
        self.served = 0
        self._done: collections.deque[float] = collections.deque(maxlen=10_000)

    def enter(self) -> None:
        with self.lock:
            self.in_flight += 1

    def leave(self, served: bool = True) -> None:
        with self.lock:
            self.in_flight -= 1
            if served:
                self.served += 1
                self._done.append(time.monotonic())

    def recent_rps(self, window_s: float = 2.0) -> float:
        """Requests served per second over the last ``window_s`` (call with ``lock`` held)."""
        now = time.monotonic()
        return sum(1 for t in self._done if now - t <= window_s) / window_s


class JsonHandler(BaseHTTPRequestHandler):
    """``GET /v2/health/ready`` and ``GET /v2/stats`` (what :meth:`stats` says); a subclass
    answers ``POST``."""

    protocol_version = "HTTP/1.1"

    def stats(self) -> dict[str, Any]:
        raise NotImplementedError

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v2/health/ready":
            self.send_json(200, {"ready": True})
        elif self.path == "/v2/stats":
            self.send_json(200, self.stats())
        else:
            self.send_json(404, {"error": "not found"})

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_until_sigterm(server: ThreadingHTTPServer, counts: Counts, drain_s: float = 10.0) -> int:
    """Serve until SIGTERM, then wait (at most ``drain_s``) for the requests in flight
    (idle keep-alive connections are not waited for)."""
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        with counts.lock:
            if counts.in_flight == 0:
                break
        time.sleep(0.01)
    server.server_close()
    return 0
