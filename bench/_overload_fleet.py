"""A fleet on loopback for overload runs: stand-in workers of fixed capacity as regions,
a real router process in front, and an open-loop client that offers a set rate.

Workers are ``bench/busy_worker.py`` processes with ``--slots``: at most ``slots``
requests in service at once, each for ``delay_ms`` (capacity ``slots / delay``), the rest
queued in arrival order and dropped (504) when their deadline passes while queued. The
router is ``meridian router`` on a snapshot file (what a control plane would publish:
each region's measured capacity and its workers' latency).

The client speaks HTTP/1.1 over raw asyncio streams with keep-alive connections opened up
front, so what it measures is the router's answer, not a client library's overhead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meridian.net import free_port
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView

__all__ = [
    "Fleet",
    "Outcome",
    "RawClient",
    "Summary",
    "measure_capacity",
    "offer",
    "overload_fleet",
    "summarise",
]

ROOT = Path(__file__).resolve().parents[1]
BUSY = ROOT / "bench" / "busy_worker.py"
MODEL = "slow"
PATH = f"/v2/models/{MODEL}/infer"
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'
CLIENT_AT = b"48.86,2.35"  # Paris
# three regions a few hundred km apart, so the router spreads load by queues, not distance
REGIONS = (("paris", 48.86, 2.35), ("frankfurt", 50.11, 8.68), ("london", 51.51, -0.13))


# --- the client ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    status: int  # 0: no answer (connection lost, or the client gave up)
    latency_ms: float
    retry_after: bool
    priority: str = "interactive"
    router_ms: float | None = None  # a refusal's own time in the router (Server-Timing)


class RawClient:
    """Keep-alive HTTP/1.1 connections to one host, reused one request at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def open(self, n: int) -> None:
        for _ in range(n):
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._idle.append((reader, writer))
            self._all.append(writer)

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        for writer in self._all:
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def request(
        self, path: str, body: bytes, headers: Sequence[tuple[str, str]] = ()
    ) -> tuple[int, dict[str, str]]:
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        head = [f"POST {path} HTTP/1.1", f"host: {self.host}", f"content-length: {len(body)}",
                "content-type: application/json", *(f"{k}: {v}" for k, v in headers)]  # fmt: skip
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        await reader.readexactly(int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer))
        return status, fields


async def measure_capacity(urls: Sequence[str], seconds: float, concurrency: int) -> float:
    """Requests per second the workers sustain together, closed loop, straight to them."""
    clients = []
    for url in urls:
        host, port = url.removeprefix("http://").split(":")
        client = RawClient(host, int(port))
        await client.open(concurrency)
        clients.append(client)
    done = 0
    stop = time.monotonic() + seconds

    async def loop(client: RawClient) -> None:
        nonlocal done
        while time.monotonic() < stop:
            status, _ = await client.request(PATH, BODY)
            if status == 200 and time.monotonic() <= stop:
                done += 1

    started = time.monotonic()
    await asyncio.gather(*(loop(c) for c in clients for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    for client in clients:
        await client.close()
    return done / elapsed


async def offer(
    client: RawClient,
    rate: float,
    seconds: float,
    *,
    deadline_ms: float | None,
    batch_share: float = 0.0,
    give_up_s: float = 30.0,
    seed: int = 1,
) -> list[Outcome]:
    """Poisson arrivals at ``rate`` for ``seconds``, each request on its own; waits for
    every answer (at most ``give_up_s`` each: status 0 then)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Outcome]] = []

    async def one(priority: str) -> Outcome:
        headers = [("x-meridian-client-location", CLIENT_AT.decode())]
        if deadline_ms is not None:
            headers.append(("x-meridian-deadline-ms", f"{deadline_ms:g}"))
        if priority == "batch":
            headers.append(("x-meridian-priority", "batch"))
        sent = time.perf_counter()
        try:
            status, fields = await asyncio.wait_for(client.request(PATH, BODY, headers), give_up_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return Outcome(0, (time.perf_counter() - sent) * 1000.0, False, priority)
        took = (time.perf_counter() - sent) * 1000.0
        return Outcome(status, took, "retry-after" in fields, priority, _router_ms(fields))

    start = time.monotonic()
    at = 0.0
    while at < seconds:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        priority = "batch" if rng.random() < batch_share else "interactive"
        tasks.append(asyncio.create_task(one(priority)))
        at += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


def _router_ms(fields: dict[str, str]) -> float | None:
    """``router;dur=0.041`` from the router's Server-Timing header, in ms."""
    for metric in fields.get("server-timing", "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == "router" and params.startswith("dur="):
            return float(params[4:])
    return None


@dataclass(frozen=True, slots=True)
class Summary:
    offered: int
    seconds: float
    ok: int
    goodput_rps: float  # answered 200 within the deadline, per second
    refused: int  # 503: refused at once
    expired: int  # 504: admitted, but the deadline passed
    unanswered: int
    refusal_p50_ms: float
    refusal_p99_ms: float
    refusal_max_ms: float
    refusal_router_p99_ms: float  # the router's own time per refusal (Server-Timing)
    refused_without_retry_after: int
    admitted_p50_ms: float  # 200 and 504: what was not refused at once
    admitted_p99_ms: float
    others: int  # any other status


def summarise(outcomes: Sequence[Outcome], seconds: float, deadline_ms: float) -> Summary:
    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else 0.0

    refused = [o.latency_ms for o in outcomes if o.status == 503]
    admitted = [o.latency_ms for o in outcomes if o.status in (200, 504)]
    good = sum(1 for o in outcomes if o.status == 200 and o.latency_ms <= deadline_ms)
    return Summary(
        offered=len(outcomes),
        seconds=seconds,
        ok=sum(1 for o in outcomes if o.status == 200),
        goodput_rps=good / seconds,
        refused=len(refused),
        expired=sum(1 for o in outcomes if o.status == 504),
        unanswered=sum(1 for o in outcomes if o.status == 0),
        refusal_p50_ms=pct(refused, 50),
        refusal_p99_ms=pct(refused, 99),
        refusal_max_ms=max(refused, default=0.0),
        refusal_router_p99_ms=pct(
            [o.router_ms for o in outcomes if o.status == 503 and o.router_ms is not None], 99
        ),
        refused_without_retry_after=sum(
            1 for o in outcomes if o.status == 503 and not o.retry_after
        ),
        admitted_p50_ms=pct(admitted, 50),
        admitted_p99_ms=pct(admitted, 99),
        others=sum(1 for o in outcomes if o.status not in (0, 200, 503, 504)),
    )


# --- the processes --------------------------------------------------------------------------------


def _spawn(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


@dataclass
class Fleet:
    workdir: Path
    worker_urls: list[str]
    delay_ms: float
    slots: int
    router_port: int = 0
    _router: subprocess.Popen[bytes] | None = None

    def snapshot(self, capacity_rps: float) -> RoutingSnapshot:
        """Three regions of one worker each, with the capacity measured per worker."""
        regions = tuple(
            RegionView(
                name=name, state=HealthState.HEALTHY, lat=lat, lon=lon,
                capacity_rps=capacity_rps,
                workers=(WorkerView(f"{name}-w1", url, HealthState.HEALTHY, (f"{MODEL}:1",),
                                    throughput_rps=capacity_rps,
                                    latency_p50_ms=self.delay_ms),),
            )
            for (name, lat, lon), url in zip(REGIONS, self.worker_urls, strict=True)
        )  # fmt: skip
        return RoutingSnapshot(version=1, generated_at=time.time(), regions=regions)

    async def start_router(self, capacity_rps: float, options: Sequence[str]) -> RawClient:
        """``meridian router`` on the snapshot, ready; a client with warm connections."""
        await self.stop_router()
        folder = self.workdir / f"router-{len(os.listdir(self.workdir))}"
        folder.mkdir()
        snap_path = folder / "snapshot.json"
        snap_path.write_bytes(self.snapshot(capacity_rps).to_json())
        self.router_port = free_port()
        cmd = [sys.executable, "-m", "meridian", "router", "--insecure", "--port",
               str(self.router_port), "--snapshot-path", str(snap_path), *options]  # fmt: skip
        self._router = _spawn(cmd, folder / "router.log")
        client = RawClient("127.0.0.1", self.router_port)
        deadline = time.monotonic() + 30.0
        while True:
            if self._router.poll() is not None:
                raise RuntimeError(f"router exited: {(folder / 'router.log').read_text()}")
            try:
                await client.open(1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        await client.open(255)
        return client

    async def stop_router(self) -> None:
        if self._router is not None:
            self._router.terminate()
            await asyncio.to_thread(self._router.wait, 15)
            self._router = None


@contextlib.asynccontextmanager
async def overload_fleet(
    workdir: Path, *, workers: int = 3, delay_ms: float = 100.0, slots: int = 2
) -> AsyncIterator[Fleet]:
    procs: list[subprocess.Popen[bytes]] = []
    urls = []
    try:
        for i in range(workers):
            port = free_port()
            procs.append(_spawn(
                [sys.executable, str(BUSY), "--port", str(port), "--model", MODEL, "--version",
                 "1", "--delay-ms", f"{delay_ms:g}", "--slots", str(slots)],
                workdir / f"worker-{i}.log",
            ))  # fmt: skip
            urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(procs, urls, strict=True):
            host, _, listening = url.removeprefix("http://").partition(":")
            deadline = time.monotonic() + 20.0
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {url} exited with {proc.returncode}")
                try:
                    _, writer = await asyncio.open_connection(host, int(listening))
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        fleet = Fleet(workdir, urls, delay_ms, slots)
        try:
            yield fleet
        finally:
            await fleet.stop_router()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
