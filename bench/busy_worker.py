"""A stand-in worker that serves inference slowly and counts what it holds (for load shapes:
the autoscaling benchmark and tests, where a real model would only slow the start).

Usage: python3 bench/busy_worker.py --port N --model M --version V [--delay-ms D] [--slots S]
``POST /v2/models/{M}[/versions/{V}]/infer`` answers after ``D`` ms (or the
``delay_ms`` query parameter's). With ``--slots S`` it serves at most S requests at once
(a capacity of S / D per second): the rest wait in arrival order, and one whose
``x-meridian-deadline-ms`` passes while it waits is answered 504 without being served,
as the real worker drops what expired in its queue. ``/v2/stats``
reports the requests in flight and the recent throughput, like the real worker.
On SIGTERM it stops accepting and finishes the requests it holds before exiting.
With ``MERIDIAN_WORKER_TLS_CERT``/``_KEY``/``_CA`` set (as a region agent with the fleet CA
sets them for its workers) it serves HTTPS and asks every client for a certificate of that
CA, like the real worker (which further answers inference to the router's role only).
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any

from bench.standin import Counts, JsonHandler, serve_until_sigterm


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--delay-ms", type=float, default=50.0)
    p.add_argument("--slots", type=int, default=0, help="requests served at once (0: any)")
    args = p.parse_args()
    counts = Counts()
    slots = threading.Semaphore(args.slots) if args.slots > 0 else None
    expired = 0

    class Handler(JsonHandler):
        def stats(self) -> dict[str, Any]:
            with counts.lock:
                return {"ready": True, "models": [f"{args.model}:{args.version}"],
                        "in_flight": counts.in_flight, "queue_depth": 0,
                        "throughput_rps": counts.recent_rps(), "served": counts.served,
                        "deadline_dropped": expired, "pid": os.getpid()}  # fmt: skip

        def do_POST(self) -> None:
            nonlocal expired
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            if not self.path.startswith(f"/v2/models/{args.model}") or "/infer" not in self.path:
                self.send_json(404, {"error": f"no model at {self.path}"})
                return
            delay = args.delay_ms
            if "delay_ms=" in self.path:
                delay = float(self.path.split("delay_ms=", 1)[1].split("&", 1)[0])
            counts.enter()
            served = False
            try:
                if slots is not None:
                    budget = self.headers.get("x-meridian-deadline-ms")
                    wait = None if budget is None else float(budget) / 1000.0
                    if wait is not None:
                        wait = max(0.0, wait - (time.monotonic() - arrived))
                    if not slots.acquire(timeout=wait):
                        with counts.lock:
                            expired += 1
                        self.send_json(504, {"error": "the deadline passed in the queue"})
                        return
                try:
                    time.sleep(delay / 1000.0)
                finally:
                    if slots is not None:
                        slots.release()
                served = True
            finally:
                counts.leave(served)
            self.send_json(200, {"model_name": args.model, "outputs": [], "pid": os.getpid()})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    context = _tls_from_env()
    if context is not None:  # each connection's handshake happens in its own thread
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    return serve_until_sigterm(server, counts)


def _tls_from_env() -> ssl.SSLContext | None:
    cert, key, ca = (os.environ.get(f"MERIDIAN_WORKER_TLS_{n}") for n in ("CERT", "KEY", "CA"))
    if not (cert and key and ca):
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED  # fleet clients only
    return context


if __name__ == "__main__":
    sys.exit(main())
