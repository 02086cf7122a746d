"""A stand-in worker for supervisor tests: serves JSON stats over HTTP, nothing else.

Usage: python3 standin_worker.py --port N --model M --version V [--crash-after S]
Its stats say ready with one loaded model; ``/v2/stats`` counts how often it was asked.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--crash-after", type=float, default=0.0)
    args = p.parse_args()
    scrapes = 0

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            nonlocal scrapes
            if self.path != "/v2/stats":
                self.send_error(404)
                return
            scrapes += 1
            body = json.dumps(
                {
                    "ready": True,
                    "models": [f"{args.model}:{args.version}"],
                    "queue_depth": 3,
                    "in_flight": 1,
                    "throughput_rps": 12.5,
                    "capacity_rps": 40,
                    "latency_p50_ms": 4.2,
                    "latency_p99_ms": 9.9,
                    "pid": os.getpid(),
                    "scrapes": scrapes,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    if args.crash_after > 0:
        threading.Timer(args.crash_after, lambda: os._exit(3)).start()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
