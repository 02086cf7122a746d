"""Hedged requests behind a hung worker: two real worker processes in one region, one
of them paused (SIGSTOP) while requests flow through a real router. Requests that went
to it are answered by a hedge on the other after the model's recent p95, not after the
upstream timeout."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.generative import WorkerProcess, tiny_model, workers

__all__ = ["tiny_model", "workers"]  # module-scoped fixtures used here

TIMEOUT_S = 5.0


def _one_region(hung: WorkerProcess, other: WorkerProcess) -> RoutingSnapshot:
    views = tuple(
        WorkerView(f"w-{w.name}", w.endpoint, HealthState.HEALTHY, ("tiny:1",))
        for w in (hung, other)  # the hung one first: the KV-aware choice breaks ties in order
    )
    region = RegionView(name="near", state=HealthState.HEALTHY, lat=10.0, lon=10.0,
                        capacity_rps=100.0, workers=views)  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=0.0, regions=(region,))


async def test_a_hung_worker_costs_a_request_a_hedge_not_its_timeout(
    tmp_path: Path, workers: dict[str, WorkerProcess]
) -> None:
    hung, other = workers["near"], workers["far"]
    settings = RouterSettings(
        port=0, snapshot_path=tmp_path / "snap.json", attempt_timeout_s=TIMEOUT_S
    )
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(_one_region(hung, other))
    await server.start()
    core = server.core
    latencies: list[float] = []
    failures: list[str] = []

    async def one(c: httpx.AsyncClient, n: int) -> None:
        body = {"model": "tiny", "prompt": f"Request {n} says", "max_tokens": 2}
        t0 = time.monotonic()
        r = await c.post("/v1/completions", json=body)
        latencies.append(time.monotonic() - t0)
        if r.status_code != 200:
            failures.append(f"{r.status_code} {r.text}")

    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", timeout=TIMEOUT_S * 3
        ) as c:
            n = 0
            deadline = time.monotonic() + 60

            async def client(until: float) -> None:
                nonlocal n
                while time.monotonic() < until:
                    n += 1
                    await one(c, n)

            while core.hedging.delay_s("tiny", False) is None:  # the router learns the p95
                assert time.monotonic() < deadline, "no p95 learnt"
                await one(c, n)
                n += 1
            # then its p95 under the load the test puts on it (two clients at once), until
            # the hedges the p95 learnt so far set off are paid back: a steady state
            budget = core.hedging.budget
            while budget.tokens < core.hedging.config.burst - 0.5:
                assert time.monotonic() < deadline, f"hedge budget at {budget.tokens:.1f}"
                soon = time.monotonic() + 0.5
                await asyncio.gather(client(soon), client(soon))
            p95 = core.hedging.p95_ms("tiny", False)
            assert p95 is not None and p95 < 1000.0
            latencies.clear()
            hung.proc.send_signal(signal.SIGSTOP)
            try:
                until = time.monotonic() + 3.0  # requests flow while it is stopped
                await asyncio.gather(client(until), client(until))
            finally:
                hung.proc.send_signal(signal.SIGCONT)
    finally:
        await server.stop()
    assert not failures
    assert len(latencies) > 10
    assert core.counters["hedges_sent"] >= 1
    assert core.counters["hedges_won"] >= 1
    # no request waited for the upstream timeout: it waited the model's p95, then the
    # hedge's own answer (under 2x the p95 plus a margin for a loaded machine)
    bound = max(1.0, 2 * p95 / 1000 + 0.5)
    assert bound < TIMEOUT_S / 2
    assert max(latencies) < bound, (max(latencies), p95)
    assert core.counters["hedges_sent"] <= 0.1 * n + core.hedging.config.burst
