"""Brownout to a quantized variant under twice a region's capacity, with and without.

One region: a base worker of fixed capacity (``bench/busy_worker.py``, ``--slots`` requests
at once, each ``delay_ms``) and a reserve worker standing for its int8 variant (a cheaper
engine run: half the time, twice the slots), behind a real ``meridian router`` process on
a snapshot whose deployment declares ``degrade_to: int8``. Twice the base's capacity is
offered open loop, every request with a deadline, once with ``--brownout-load 1`` and once
with brownout off. Printed: the share the variant served, goodput and latency, side by side.

    python -m bench.brownout [--quick]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np

from bench._overload_fleet import BODY, BUSY, CLIENT_AT, MODEL, PATH, RawClient, _spawn
from bench.report import parse_args, record, table
from meridian.net import free_port
from meridian.snapshot import (
    DeploymentRoute,
    HealthState,
    RegionView,
    RoutingSnapshot,
    WorkerView,
)

__all__ = ["Answer", "BrownoutFleet", "brownout_fleet", "offer", "summary"]

ROOT = Path(__file__).resolve().parents[1]
BASE_DELAY_MS, BASE_SLOTS = 100.0, 2  # 20 requests/s
INT8_DELAY_MS, INT8_SLOTS = 50.0, 4  # 80 requests/s: a cheaper run, more per GPU
DEADLINE_MS = 1000.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int  # 0: no answer
    latency_ms: float
    variant: str  # the x-meridian-variant header ("": the base served it)


async def _wait_port(port: int, proc: object, what: str) -> None:
    deadline = time.monotonic() + 30.0
    while True:
        if getattr(proc, "poll")() is not None:  # noqa: B009
            raise RuntimeError(f"{what} exited")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@dataclass
class BrownoutFleet:
    workdir: Path
    base_url: str
    int8_url: str
    router_port: int = 0

    def snapshot(self) -> RoutingSnapshot:
        base = WorkerView("paris-base", self.base_url, HealthState.HEALTHY, (f"{MODEL}:1",),
                          capacity_rps=1000.0 * BASE_SLOTS / BASE_DELAY_MS,
                          latency_p50_ms=BASE_DELAY_MS)  # fmt: skip
        int8 = WorkerView("paris-int8", self.int8_url, HealthState.HEALTHY, (f"{MODEL}:1:int8",),
                          capacity_rps=1000.0 * INT8_SLOTS / INT8_DELAY_MS,
                          latency_p50_ms=INT8_DELAY_MS)  # fmt: skip
        region = RegionView("paris", HealthState.HEALTHY, 48.86, 2.35,
                            capacity_rps=base.capacity_rps + int8.capacity_rps,
                            workers=(base, int8))  # fmt: skip
        deployment = DeploymentRoute(MODEL, "1", "paris", degrade_to="int8")
        return RoutingSnapshot(1, time.time(), regions=(region,), deployments=(deployment,))

    @contextlib.asynccontextmanager
    async def router(self, brownout_load: float, hold_s: float = 1.0) -> AsyncIterator[RawClient]:
        folder = self.workdir / f"router-{len(os.listdir(self.workdir))}"
        folder.mkdir()
        snap_path = folder / "snapshot.json"
        snap_path.write_bytes(self.snapshot().to_json())
        self.router_port = free_port()
        os.environ["MERIDIAN_ROUTER_BROWNOUT_HOLD_S"] = f"{hold_s:g}"
        proc = _spawn([sys.executable, "-m", "meridian", "router", "--insecure", "--port",
                       str(self.router_port), "--snapshot-path", str(snap_path),
                       "--brownout-load", f"{brownout_load:g}"], folder / "router.log")  # fmt: skip
        try:
            await _wait_port(self.router_port, proc, "router")
            client = RawClient("127.0.0.1", self.router_port)
            await client.open(200)
            try:
                yield client
            finally:
                await client.close()
        finally:
            proc.terminate()
            await asyncio.to_thread(proc.wait, 15)

    async def metrics(self) -> str:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.router_port)
        writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        raw = await reader.read()
        writer.close()
        return raw.decode()


@contextlib.asynccontextmanager
async def brownout_fleet(workdir: Path) -> AsyncIterator[BrownoutFleet]:
    procs, urls = [], []
    try:
        for name, delay, slots in (("base", BASE_DELAY_MS, BASE_SLOTS),
                                   ("int8", INT8_DELAY_MS, INT8_SLOTS)):  # fmt: skip
            port = free_port()
            proc = _spawn([sys.executable, str(BUSY), "--port", str(port), "--model", MODEL,
                           "--version", "1", "--delay-ms", f"{delay:g}", "--slots", str(slots)],
                          workdir / f"{name}.log")  # fmt: skip
            procs.append(proc)
            await _wait_port(port, proc, name)
            urls.append(f"http://127.0.0.1:{port}")
        yield BrownoutFleet(workdir, urls[0], urls[1])
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.to_thread(proc.wait, 15)


async def offer(client: RawClient, rate: float, seconds: float, seed: int = 1) -> list[Answer]:
    """Poisson arrivals at ``rate`` for ``seconds``; every answer awaited."""
    rng = random.Random(seed)
    headers = [("x-meridian-client-location", CLIENT_AT.decode()),
               ("x-meridian-deadline-ms", f"{DEADLINE_MS:g}")]  # fmt: skip

    async def one() -> Answer:
        sent = time.perf_counter()
        try:
            status, fields = await asyncio.wait_for(client.request(PATH, BODY, headers), 30.0)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            return Answer(0, (time.perf_counter() - sent) * 1000.0, "")
        took = (time.perf_counter() - sent) * 1000.0
        return Answer(status, took, fields.get("x-meridian-variant", ""))

    tasks: list[asyncio.Task[Answer]] = []
    start, at = time.monotonic(), 0.0
    while at < seconds:
        delay = start + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
        at += rng.expovariate(rate)
    return list(await asyncio.gather(*tasks))


def summary(answers: Sequence[Answer], seconds: float) -> dict[str, float]:
    ok = [a for a in answers if a.status == 200]
    latencies = [a.latency_ms for a in ok] or [0.0]
    return {
        "offered": len(answers),
        "ok": len(ok),
        "int8_share": sum(1 for a in ok if a.variant == "int8") / max(1, len(ok)),
        "goodput_rps": sum(1 for a in ok if a.latency_ms <= DEADLINE_MS) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "failed": sum(1 for a in answers if a.status != 200),
    }


async def _main(seconds: float) -> dict[str, dict[str, float]]:
    rate = 2 * 1000.0 * BASE_SLOTS / BASE_DELAY_MS  # twice the base's capacity
    results = {}
    with TemporaryDirectory() as tmp:
        async with brownout_fleet(Path(tmp)) as fleet:
            for name, load in (("brownout", 1.0), ("off", 0.0)):
                async with fleet.router(load) as client:
                    results[name] = summary(await offer(client, rate, seconds), seconds)
    return results


def main() -> None:
    args = parse_args(__doc__ or "")
    seconds = 4.0 if args.quick else 15.0
    r = asyncio.run(_main(seconds))
    on, off = r["brownout"], r["off"]
    keys = ("offered", "ok", "failed", "int8_share", "goodput_rps", "p50_ms", "p99_ms")
    rows = [[mode, *(int(v[k]) if k in ("offered", "ok", "failed") else v[k] for k in keys)]
            for mode, v in r.items()]  # fmt: skip
    ratio = on["goodput_rps"] / max(off["goodput_rps"], 1e-9)
    body = (
        f"One region: a base worker of {BASE_SLOTS} slots x {BASE_DELAY_MS:g} ms "
        f"({1000 * BASE_SLOTS / BASE_DELAY_MS:g} req/s) and the reserve of its int8 variant "
        f"({INT8_SLOTS} slots x {INT8_DELAY_MS:g} ms), stand-in processes behind a `meridian "
        f"router` process; twice the base's capacity offered (Poisson) for {seconds:g} s per "
        f"mode, deadline {DEADLINE_MS:g} ms; latencies at the client.\n\n"
        + table(
            ["mode", "offered", "200", "failed", "int8 share", "goodput/s", "p50 ms", "p99 ms"],
            rows,
        )
        + f"\n\nGoodput with brownout vs without: **{ratio:.1f}x**; p99 {on['p99_ms']:.0f} ms "
        f"instead of {off['p99_ms']:.0f} ms.\n"
    )
    figures: dict[str, float | int | str] = {
        "int8_share": round(on["int8_share"], 3),
        "goodput_brownout_rps": round(on["goodput_rps"], 1),
        "goodput_off_rps": round(off["goodput_rps"], 1),
        "goodput_ratio": round(ratio, 2),
        "p99_brownout_ms": round(on["p99_ms"], 1),
        "p99_off_ms": round(off["p99_ms"], 1),
        "deadline_ms": DEADLINE_MS,
    }
    record("brownout", "Brownout to an int8 variant under twice the load (bench.brownout)", body,
           figures, quick=args.quick, write=not args.no_write)  # fmt: skip


if __name__ == "__main__":
    main()
