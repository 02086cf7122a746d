"""Request deadlines: the header, admission at the router, and a real worker that is slow.

A request carries ``x-meridian-deadline-ms``; the router refuses at once (503 with
``Retry-After``) what the best region cannot finish in time, passes what is left of the
budget to the worker, and answers 504 when it runs out; the worker drops what expired
in its queue before running it."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from meridian.deadline import parse_deadline_ms
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from meridian.waiting import wait_until_async
from router.http11 import Request, Response
from router.policies import (
    MeridianPolicy,
    NearestPolicy,
    RoundRobinPolicy,
    RouteRequest,
    RouterStats,
    WaterfallPolicy,
)
from router.ranking import make_policy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for
from tests.worker.inprocess import GateEngine, LiveWorker, live_worker
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings

EDGE = "x-meridian-client-location"
DEADLINE = "x-meridian-deadline-ms"
PARIS = (48.86, 2.35)


# --- the header ---------------------------------------------------------------------------


def test_the_deadline_header_is_milliseconds_and_anything_else_says_what_is_wrong() -> None:
    assert parse_deadline_ms(None) is None
    assert parse_deadline_ms(b"250") == 250.0
    assert parse_deadline_ms(b" 12.5 ") == 12.5
    for bad in (b"soon", b"", b"0", b"-5", b"nan", b"inf", b"1e12"):
        with pytest.raises(ValueError, match="x-meridian-deadline-ms must be"):
            parse_deadline_ms(bad)


# --- the policy's expected completion time ----------------------------------------------------


def test_the_expected_completion_time_is_the_policys_cost_in_ms() -> None:
    idle = StandInWorker("eu")
    snap = snapshot_for({"eu": (idle, *PARIS)})
    route = RouteRequest("mlp", *PARIS)
    stats, now = RouterStats(), time.monotonic()
    meridian = MeridianPolicy(default_service_ms=50.0)
    assert meridian.rank(snap, stats, route, now) == ["eu"]
    expected = meridian.expected_ms(snap, stats, route, "eu", now)
    assert expected is not None
    rtt = NearestPolicy().expected_ms(snap, stats, route, "eu", now)
    assert rtt is not None and 0.0 < rtt < 20.0  # next door: the fitted base RTT
    assert expected == pytest.approx(rtt + 50.0, abs=1.0)  # idle: RTT + service, no wait
    # scores that are not times are never compared with a deadline
    assert RoundRobinPolicy().expected_ms(snap, stats, route, "eu", now) is None
    assert WaterfallPolicy().expected_ms(snap, stats, route, "eu", now) is None
    assert meridian.expected_ms(snap, stats, route, "nowhere", now) is None


# --- through the router ----------------------------------------------------------------------


@pytest.fixture
async def one_region(tmp_path: Path) -> AsyncIterator[tuple[RouterServer, StandInWorker]]:
    worker = StandInWorker("eu")
    await worker.start()
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json"), make_policy("meridian")
    )
    server.store.offer(snapshot_for({"eu": (worker, *PARIS)}))
    await server.start()
    try:
        yield server, worker
    finally:
        await server.stop()
        await worker.stop()


def _request(deadline: str | None) -> Request:
    headers = [(EDGE.encode(), b"48.86,2.35")]
    if deadline is not None:
        headers.append((DEADLINE.encode(), deadline.encode()))
    return Request("POST", "/v2/models/mlp/infer", "", headers, b"{}", "127.0.0.1")


async def test_a_deadline_the_best_region_cannot_meet_is_refused_at_once(
    one_region: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = one_region
    core = server.core
    refused = await core.handle(_request("20"))  # the region's expected time is ~58 ms
    assert isinstance(refused, Response) and refused.status == 503
    headers = dict(refused.headers)
    assert int(headers[b"retry-after"]) >= 1
    message = orjson.loads(refused.body)["error"]
    assert "deadline of 20 ms cannot be met" in message and "(eu)" in message
    assert worker.seen == []  # no worker was contacted
    # router time of a refusal: well under a millisecond
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        answer = await core.handle(_request("20"))
    per_request_ms = (time.perf_counter() - started) * 1000.0 / n
    assert answer.status == 503
    print(f"admission refusal: {per_request_ms * 1000.0:.0f} us of router time per request")
    assert per_request_ms < 0.5
    assert core.counters["deadline_refused"] == n + 1
    assert worker.seen == []
    # a deadline it can meet goes through
    served = await core.handle(_request("1000"))
    assert served.status == 200


async def test_a_malformed_deadline_is_400_that_says_why(
    one_region: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = one_region
    answer = await server.core.handle(_request("tomorrow"))
    assert isinstance(answer, Response) and answer.status == 400
    assert "x-meridian-deadline-ms must be a number" in orjson.loads(answer.body)["error"]
    assert worker.seen == []


async def test_the_worker_gets_the_budget_left_and_failover_a_smaller_one(
    tmp_path: Path,
) -> None:
    broken, spare = StandInWorker("eu", status=500, delay_s=0.05), StandInWorker("us")
    for w in (broken, spare):
        await w.start()
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json"), make_policy("meridian")
    )
    server.store.offer(snapshot_for({"eu": (broken, *PARIS), "us": (spare, 39.05, -77.49)}))
    await server.start()
    try:
        answer = await server.core.handle(_request("2000"))
        assert answer.status == 200
        assert dict(answer.headers)[b"x-meridian-region"] == b"us"
        first = float(broken.seen[0].header(DEADLINE.encode()) or 0)
        second = float(spare.seen[0].header(DEADLINE.encode()) or 0)
        assert 1900.0 < first < 2000.0
        assert second < first - 40.0  # the failed attempt's 50 ms are gone from the budget
        # no deadline from the client: none is invented
        await server.core.handle(_request(None))
        assert broken.seen[-1].header(DEADLINE.encode()) is None
    finally:
        await server.stop()
        for w in (broken, spare):
            await w.stop()


# --- a real worker, made slow -----------------------------------------------------------------


def _region(worker: LiveWorker) -> RoutingSnapshot:
    region = RegionView(
        name="eu", state=HealthState.HEALTHY, lat=PARIS[0], lon=PARIS[1], capacity_rps=100.0,
        workers=(WorkerView("eu-w1", worker.url, HealthState.HEALTHY, ("gate:1",)),),
    )  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=time.time(), regions=(region,))


def _body(value: float) -> bytes:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}
    return orjson.dumps({"inputs": [tensor]})


def _deadline_dropped(metrics: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("meridian_worker_deadline_dropped_total{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_slow_worker_with_short_deadlines_answers_every_request_in_time(
    tmp_path: Path,
) -> None:
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0)
    dp = DataPlane(settings)
    engine = GateEngine(width=4)
    await dp.install_engine("gate", "1", engine)
    router = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json"), make_policy("meridian")
    )
    async with live_worker(settings, dp) as worker:
        router.store.offer(_region(worker))
        await router.start()
        try:
            async with (
                httpx.AsyncClient(base_url=worker.url, timeout=30.0) as direct,
                httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{router.port}", timeout=30.0,
                    headers={EDGE: "48.86,2.35"}, limits=httpx.Limits(max_connections=100),
                ) as client,
            ):  # fmt: skip
                # a malformed deadline at the worker itself is a 400 that says why
                bad = await direct.post(
                    "/v2/models/gate/infer", content=_body(0), headers={DEADLINE: "x"}
                )
                assert bad.status_code == 400
                assert "x-meridian-deadline-ms" in bad.text
                # the engine is stuck on one request: everything else queues behind it
                engine.gate.clear()
                blocker = asyncio.create_task(direct.post("/v2/models/gate/infer",
                                                          content=_body(1)))  # fmt: skip
                await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
                runs_before = len(engine.batches)

                router_ms: list[float] = []  # the router's own time (Server-Timing)

                async def one(budget_ms: int, delay: float) -> tuple[int, float, str, str]:
                    await asyncio.sleep(delay)
                    sent = time.monotonic()
                    r = await client.post("/v2/models/gate/infer", content=_body(2),
                                          headers={DEADLINE: str(budget_ms)})  # fmt: skip
                    took = (time.monotonic() - sent) * 1000.0
                    timing = r.headers.get("server-timing", "")
                    if timing.startswith("router;dur="):
                        router_ms.append(float(timing.removeprefix("router;dur=")))
                    return r.status_code, took, r.headers.get("retry-after", ""), r.text

                # open the client's connections first: the clock below is the router's work
                await asyncio.gather(*(client.get("/v2/health/live") for _ in range(20)))
                rng = random.Random(7)
                queued = await asyncio.gather(*(one(300, rng.uniform(0, 0.1)) for _ in range(20)))
                statuses = [s for s, _, _, _ in queued]
                took = np.array([t for _, t, _, _ in queued])
                print(f"300 ms deadlines: statuses {sorted(set(statuses))}, answered within "
                      f"{took.max():.0f} ms at most ({max(router_ms, default=0):.0f} ms in the "
                      "router)")  # fmt: skip
                assert len(queued) == 20  # 0 unanswered
                assert set(statuses) <= {503, 504}
                assert 504 in statuses  # some were admitted, queued and expired
                # the router answered each one by its deadline on its own clock, with a margin
                # for the one event loop that 20 clients, the router and the worker share in
                # this test process; the clients, on the same loop, see more on a busy machine
                assert len(router_ms) == statuses.count(504)
                assert max(router_ms) < 300 + 150
                assert took.max() < 300 + 1000
                expired = [text for s, _, _, text in queued if s == 504]
                assert all("deadline" in text for text in expired)
                metrics = (await direct.get("/metrics")).text
                assert _deadline_dropped(metrics) >= 1  # dropped while queued at the worker
                assert len(engine.batches) == runs_before  # none of them was run
                # the router has seen the region's queue: short deadlines are refused at once
                refused = [await one(150, 0.0) for _ in range(20)]  # over a warm connection
                assert all(s == 503 and ra for s, _, ra, _ in refused)
                assert all("cannot be met" in text for _, _, _, text in refused)
                refused_ms = np.array([t for _, t, _, _ in refused])
                print(f"150 ms deadlines: all 503, median {np.median(refused_ms):.1f} ms, "
                      f"at most {refused_ms.max():.1f} ms at the client")  # fmt: skip
                assert refused_ms.max() < 50.0
                assert _deadline_dropped((await direct.get("/metrics")).text) == (
                    _deadline_dropped(metrics)
                )  # the refused never reached the worker
                engine.gate.set()
                assert (await blocker).status_code == 200
        finally:
            engine.gate.set()
            await router.stop()
