"""A slow region and a dead one, through the router's serving path on real loopback sockets."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meridian.waiting import wait_until_async
from router.policies import RegionStats
from router.ranking import make_policy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for

EDGE = "x-meridian-client-location"
# Paris; eu is nearest, us next, ap farthest
PLACES = {"eu": (50.11, 8.68), "us": (39.05, -77.49), "ap": (35.68, 139.65)}


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[RouterServer, dict[str, StandInWorker]]]:
    workers = {name: StandInWorker(name) for name in PLACES}
    for w in workers.values():
        await w.start()
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "snap.json", breaker_cooldown_s=0.3)
    server = RouterServer(settings, make_policy("meridian"))
    server.store.offer(
        snapshot_for({name: (workers[name], lat, lon) for name, (lat, lon) in PLACES.items()})
    )
    await server.start()
    try:
        yield server, workers
    finally:
        await server.stop()
        for w in workers.values():
            if w.server is not None:
                await w.stop()


Result = tuple[float, str, int, int]


async def _load(
    port: int, seconds: float, rate: float, verify: ssl.SSLContext | None = None
) -> list[Result]:
    """Open-loop load from Paris: (sent at, region, status, attempts) of each request
    (over HTTPS, trusting ``verify``, when given)."""
    out: list[Result] = []
    async with httpx.AsyncClient(
        base_url=f"{'https' if verify else 'http'}://127.0.0.1:{port}",
        headers={EDGE: "48.86,2.35"}, timeout=10.0, limits=httpx.Limits(max_connections=200),
        verify=verify or True,
    ) as client:  # fmt: skip

        async def one(at: float) -> None:
            r = await client.post("/v2/models/mlp/infer", content=b"{}")
            attempts = int(r.headers.get("x-meridian-attempts", "0"))
            out.append((at, r.headers.get("x-meridian-region", ""), r.status_code, attempts))

        tasks = []
        start = time.monotonic()
        n = 0
        while (now := time.monotonic()) - start < seconds:
            tasks.append(asyncio.create_task(one(now - start)))
            n += 1
            # a client stalled with the loop skips the sends it missed: a burst of them
            # would fill the region's queue and rightly spill to the next region
            n = max(n, int((time.monotonic() - start) * rate))
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return out


def _share(results: list[Result], region: str, start: float, stop: float) -> float:
    window = [r for t, r, _, _ in results if start <= t < stop]
    return Counter(window)[region] / max(len(window), 1)


async def test_a_slow_region_loses_its_traffic_and_regains_it(fleet) -> None:
    server, workers = fleet
    before = await _load(server.port, 1.0, rate=50)
    assert _share(before, "eu", 0.0, 1.0) == 1.0
    workers["eu"].delay_s = 0.3  # a gray failure: it still answers 200, 300 ms late
    slow = await _load(server.port, 5.0, rate=50)
    assert all(status == 200 for _, _, status, _ in slow)
    assert _share(slow, "eu", 1.0, 5.0) <= 0.2  # fallen by 80% and more within 5 s
    assert _share(slow, "eu", 4.0, 5.0) <= 0.1
    assert server.core.counters["shadow_probes"] > 0
    wait = server.core.stats.region("eu", time.monotonic()).wait_ms
    assert wait > 100.0  # what /metrics shows as meridian_router_region_wait_ms
    workers["eu"].delay_s = 0.0  # recovered: the shadow probes see it
    back = await _load(server.port, 4.0, rate=50)
    assert _share(back, "eu", 3.0, 4.0) >= 0.9


async def test_the_routers_own_stall_is_not_blamed_on_the_region(fleet) -> None:
    # the router's process is starved (a collection, a noisy neighbour) while requests are
    # in flight: their answers are read late, but the region was not slow
    server, workers = fleet
    workers["eu"].delay_s = 0.02  # so that requests are in flight when the loop stalls

    core = server.core

    async def stall() -> RegionStats:
        await wait_until_async(lambda: core.outstanding["eu-w1"] >= 1, timeout=10, what="sent")
        served = core.counters["served"] + core.outstanding["eu-w1"]
        time.sleep(0.4)  # noqa: ASYNC251  (blocks the loop: a stall, not a wait)
        await wait_until_async(lambda: core.counters["served"] >= served, timeout=10, what="read")
        core.observed.flush(time.monotonic())
        return core.stats.region("eu", time.monotonic())  # what it learned from those answers

    stalling = asyncio.create_task(stall())
    results = await _load(server.port, 1.5, rate=50)
    eu = await stalling
    assert core.lag.stalled_ms() >= 400.0
    assert eu.service_ms < 100.0 and eu.wait_ms < 50.0, eu  # 20 ms answers, read 400 ms late
    assert _share(results, "eu", 0.0, 1.5) >= 0.9  # (other stalls on a loaded machine)


async def test_a_dead_region_is_ejected_on_its_first_refusal(fleet) -> None:
    server, workers = fleet
    port = server.port
    await workers["eu"].stop()  # the region dies: its worker refuses connections
    results = await _load(port, 2.0, rate=50)
    assert all(status == 200 for _, _, status, _ in results)  # nobody saw an error
    retried = [t for t, _, _, attempts in results if attempts > 1]
    assert retried and max(retried) < 1.0  # no request affected later than 1 s after
    # the breaker's cooldown (0.3 s) ran out long before the end, yet no request went
    # back to the dead worker: it stays ejected until it accepts connections again
    assert server.core.counters["worker_ejections"] == 1
    assert server.core.outliers.is_ejected("eu-w1")
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        metrics = (await client.get("/metrics")).text
    assert 'meridian_router_workers_ejected{region="eu"} 1.0' in metrics
    # it starts again on its port: a connect probe readmits it and traffic returns
    await workers["eu"].start()
    again = await _load(port, 1.5, rate=50)
    assert not server.core.outliers.is_ejected("eu-w1")
    assert server.core.counters["worker_readmissions"] == 1
    assert _share(again, "eu", 1.0, 1.5) == 1.0


async def test_with_every_worker_ejected_the_router_tries_them_anyway(fleet) -> None:
    """The router's own view may be what is wrong (a blip of its network): a panic."""
    server, workers = fleet
    for name, w in workers.items():
        server.core.outliers.eject(f"{name}-w1", w.endpoint)
    results = await _load(server.port, 0.5, rate=20)
    assert all(status == 200 for _, _, status, _ in results)
    assert server.core.outliers.quiet  # answering readmitted them
