"""A stand-in worker whose behaviour depends on the model version it serves (the agent's
``--worker-command`` seam), for rollout tests: good, failing, slow or different versions.

Usage: python3 tests/e2e/canary_worker.py --port N --model M --version V

``MERIDIAN_CANARY_BEHAVIOUR`` (JSON, inherited from the agent) maps a version to how it
behaves: ``fail`` (share of requests answered 500), ``delay_factor`` (times the base
delay), ``seed`` (a different model: other embeddings for the same text). Every version
not named is the good one: ``--delay-ms`` per request, seed 0. ``POST .../infer`` answers
a 16-dimensional unit ``embedding`` of the request's text and the version that served.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from http.server import ThreadingHTTPServer
from typing import Any

from bench.standin import Counts, JsonHandler, serve_until_sigterm

DIM = 16
ENV = "MERIDIAN_CANARY_BEHAVIOUR"


def embedding(text: str, seed: int) -> list[float]:
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    values = [(b - 127.5) / 127.5 for b in digest[:DIM]]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--delay-ms", type=float, default=50.0)
    args = p.parse_args()
    behaviour = json.loads(os.environ.get(ENV, "{}")).get(args.version, {})
    fail = float(behaviour.get("fail", 0.0))
    delay_s = args.delay_ms * float(behaviour.get("delay_factor", 1.0)) / 1000.0
    seed = int(behaviour.get("seed", 0))
    rng = random.Random()
    counts = Counts()
    key = f"{args.model}:{args.version}"
    prefix = f"/v2/models/{args.model}"

    class Handler(JsonHandler):
        def stats(self) -> dict[str, Any]:
            with counts.lock:
                return {"ready": True, "models": [key], "in_flight": counts.in_flight,
                        "queue_depth": 0, "throughput_rps": counts.recent_rps(),
                        "served": counts.served, "capacity_rps": 50.0 / delay_s,
                        "latency_p50_ms": delay_s * 1000.0, "pid": os.getpid()}  # fmt: skip

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            ours = path in (f"{prefix}/infer", f"{prefix}/versions/{args.version}/infer")
            if not ours:
                self.send_json(404, {"error": f"{key} does not serve {path}"})
                return
            try:
                text = str(json.loads(raw)["inputs"][0]["data"][0])
            except (ValueError, KeyError, IndexError, TypeError):
                text = ""
            counts.enter()
            try:
                time.sleep(delay_s)
            finally:
                counts.leave()
            if fail and rng.random() < fail:
                self.send_json(500, {"error": f"{key} failed"})
                return
            output = {"name": "embedding", "datatype": "FP32", "shape": [1, DIM],
                      "data": embedding(text, seed)}  # fmt: skip
            self.send_json(200, {"model_name": args.model, "model_version": args.version,
                                 "outputs": [output]})  # fmt: skip

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    return serve_until_sigterm(server, counts)


if __name__ == "__main__":
    sys.exit(main())
