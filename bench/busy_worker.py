"""A stand-in worker that serves inference slowly and counts what it holds (for load shapes:
the autoscaling benchmark and tests, where a real model would only slow the start).

Usage: python3 bench/busy_worker.py --port N --model M --version V [--delay-ms D]
``POST /v2/models/{M}[/versions/{V}]/infer`` answers after ``D`` ms (or the
``delay_ms`` query parameter's); ``/v2/stats``
reports the requests in flight and the recent throughput, like the real worker.
On SIGTERM it stops accepting and finishes the requests it holds before exiting.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--delay-ms", type=float, default=50.0)
    args = p.parse_args()
    lock = threading.Lock()
    in_flight = 0
    served = 0
    done: collections.deque[float] = collections.deque(maxlen=10_000)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, payload: dict[str, object]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/v2/health/ready":
                self._send(200, {"ready": True})
                return
            if self.path != "/v2/stats":
                self._send(404, {"error": "not found"})
                return
            now = time.monotonic()
            with lock:
                recent = sum(1 for t in done if now - t <= 2.0) / 2.0
                stats = {"ready": True, "models": [f"{args.model}:{args.version}"],
                         "in_flight": in_flight, "queue_depth": 0, "throughput_rps": recent,
                         "served": served, "pid": os.getpid()}  # fmt: skip
            self._send(200, stats)

        def do_POST(self) -> None:
            nonlocal in_flight, served
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if not self.path.startswith(f"/v2/models/{args.model}") or "/infer" not in self.path:
                self._send(404, {"error": f"no model at {self.path}"})
                return
            delay = args.delay_ms
            if "delay_ms=" in self.path:
                delay = float(self.path.split("delay_ms=", 1)[1].split("&", 1)[0])
            with lock:
                in_flight += 1
            try:
                time.sleep(delay / 1000.0)
            finally:
                with lock:
                    in_flight -= 1
                    served += 1
                    done.append(time.monotonic())
            self._send(200, {"model_name": args.model, "outputs": [], "pid": os.getpid()})

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # finish the requests in flight (idle keep-alive
        with lock:  # connections are not waited for)
            if in_flight == 0:
                break
        time.sleep(0.01)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
