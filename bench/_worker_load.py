"""Load generator for ``bench.worker`` (run as its own process so its CPU use is
not charged to the server's event loop): closed-loop clients, one keep-alive connection each.

Prints one JSON line: requests, errors, elapsed seconds, latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import urlsplit

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


TEXT = "Latency is network distance plus queueing plus service time."


def text_body(rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    """An OIP request with ``rows`` sentences as a BYTES tensor (JSON form)."""
    body = orjson.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [rows], "data": [TEXT] * rows}]}
    )
    return body, {"Content-Type": "application/json"}


def naive_text_body(rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    return TEXT.encode(), {"Content-Type": "text/plain"}


def naive_body(rows: int, width: int) -> tuple[bytes, dict[str, str]]:
    data = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32).tobytes()
    return data, {"Content-Type": "application/octet-stream"}


async def _client(
    host: str,
    port: int,
    request: bytes,
    stop_at: float,
    measure_from: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    """One keep-alive HTTP/1.1 connection sending ``request`` back to back.

    Hand-rolled on asyncio streams: a general client (aiohttp, httpx) costs
    several times more CPU per request, CPU the server under test then lacks."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= measure_from:
                if status == 200:
                    latencies.append(t1 - t0)
                else:
                    errors.append(status)
    finally:
        writer.close()


async def run(
    url: str, body: bytes, headers: dict[str, str], concurrency: int, duration: float, warmup: float
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = [f"POST {parts.path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration
    await asyncio.gather(
        *(
            _client(host, port, request, stop_at, measure_from, latencies, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - measure_from
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "elapsed_s": elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else 0.0,
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else 0.0,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["oip", "naive", "text", "naive-text"], required=True)
    p.add_argument("--concurrency", type=int, required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--width", type=int, required=True)
    args = p.parse_args()
    make = {
        "oip": oip_body,
        "naive": naive_body,
        "text": text_body,
        "naive-text": naive_text_body,
    }[args.mode]
    body, headers = make(args.rows, args.width)
    import uvloop  # ships with uvicorn[standard]

    result = uvloop.run(run(args.url, body, headers, args.concurrency, args.duration, args.warmup))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
