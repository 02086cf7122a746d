"""Load generator for ``bench.worker`` (run as its own process so its CPU use is
not charged to the server's event loop): closed-loop clients, one keep-alive connection each.

Prints one JSON line: requests, errors, elapsed seconds and latency percentiles
(after the warm-up), and the client's CPU seconds with the responses it got
over the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import sys
import time
from typing import cast
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


def _same(client: _Client) -> _Client:
    return client


class _Client(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection sending ``request`` back to back.

    Hand-rolled on an asyncio protocol: a general client (aiohttp, httpx), or
    even asyncio streams, costs several times more CPU per request, CPU the
    server under test then lacks. It understands just what the servers under
    test answer: a status line, headers, a ``Content-Length`` body."""

    def __init__(
        self,
        request: bytes,
        stop_at: float,
        measure_from: float,
        latencies: list[float],
        errors: list[int],
        done: asyncio.Future[None],
    ) -> None:
        self._request = request
        self._stop_at = stop_at
        self._measure_from = measure_from
        self._latencies = latencies
        self._errors = errors
        self._done = done
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._sent = 0.0
        self.answered = 0  # responses, warm-up included

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            self._done.set_exception(exc or ConnectionError("server closed the connection"))

    def _send(self) -> None:
        assert self._transport is not None
        self._sent = time.perf_counter()
        if self._sent >= self._stop_at:
            self._transport.close()
            if not self._done.done():
                self._done.set_result(None)
            return
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            return
        head = buffer[:end].lower()
        length = 0
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
        if len(buffer) < end + 4 + length:
            self._buffer = buffer
            return
        self._buffer = buffer[end + 4 + length :]
        now = time.perf_counter()
        self.answered += 1
        if self._sent >= self._measure_from:
            if head[9:12] == b"200":
                self._latencies.append(now - self._sent)
            else:
                self._errors.append(int(head[9:12]))
        self._send()


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
    cpu_start = time.process_time()
    measure_from = start + warmup
    stop_at = measure_from + duration
    loop = asyncio.get_running_loop()
    done: list[asyncio.Future[None]] = []
    clients: list[_Client] = []
    for _ in range(concurrency):
        finished: asyncio.Future[None] = loop.create_future()
        client = _Client(request, stop_at, measure_from, latencies, errors, finished)
        await loop.create_connection(functools.partial(_same, client), host, port)
        done.append(finished)
        clients.append(client)
    await asyncio.gather(*done)
    elapsed = time.perf_counter() - measure_from
    cpu_s = time.process_time() - cpu_start
    lat = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "elapsed_s": elapsed,
        "cpu_s": cpu_s,  # the client's own CPU over the whole run, warm-up included
        "answered": sum(c.answered for c in clients),  # over the same span
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
