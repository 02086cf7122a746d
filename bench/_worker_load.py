"""Load generator for ``bench.worker`` (run as its own process so its CPU use is
not charged to the server's event loop): closed-loop clients with keep-alive.

Prints one JSON line: requests, errors, elapsed seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np
import orjson


def oip_body(rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    data = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [rows, width],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
    )
    return header + data, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def naive_body(rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    data = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32).tobytes()
    return data, {"Content-Type": "application/octet-stream"}


async def run(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, warmup: float
) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            async with session.post(url, data=body, headers=headers) as r:
                await r.read()
                ok = r.status == 200
            t1 = time.perf_counter()
            if t0 >= measure_from:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - measure_from
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": errors,
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else 0.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["oip", "naive"], required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--width", type=int, required=True)
    args = p.parse_args()
    make = oip_body if args.mode == "oip" else naive_body
    body, headers = make(args.rows, args.width)
    import uvloop  # ships with uvicorn[standard]

    result = uvloop.run(run(args.url, body, headers, args.concurrency, args.duration, args.warmup))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
