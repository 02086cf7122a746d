"""The hold verdict: batch requests over the batch ceiling (and under the interactive one)
wait in a bounded per-key fair queue, released round robin as the load falls; every held
request is answered, refused (503, Retry-After) when the queue is full, its deadline comes
first, or the router stops."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from meridian.waiting import wait_until_async
from router.admission import Admission, AdmissionConfig
from router.hold import HoldQueue
from router.http11 import Request, Response
from router.keys import digest
from router.ranking import make_policy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker

LONG = 3600.0  # the queue's own tick never comes in these tests: they pump it themselves


class Room:
    def __init__(self) -> None:
        self.open = False

    def __call__(self, model: str) -> bool:
        return self.open


async def _waiting(queue: HoldQueue, n: int) -> None:
    await wait_until_async(lambda: queue.held == n, timeout=5.0)


async def test_releases_take_the_keys_in_turn() -> None:
    room = Room()
    queue = HoldQueue(20, room, tick_s=LONG)
    tasks = [asyncio.create_task(queue.hold(key, "m", 60.0)) for key in "aaaaaabbc"]
    await _waiting(queue, 9)
    assert queue.pump() is None  # no room: nothing leaves
    room.open = True
    order = [queue.pump() for _ in range(9)]
    # one key with six waiting does not hold back the keys with two and one
    assert order == ["a", "b", "c", "a", "b", "a", "a", "a", "a"]
    assert queue.pump() is None and queue.held == 0
    assert await asyncio.gather(*tasks) == ["released"] * 9
    assert queue.counts["released"] == 9


async def test_bounds_expiry_cancellation_and_close() -> None:
    room = Room()
    queue = HoldQueue(3, room, max_per_key=2, tick_s=LONG)
    a1 = asyncio.create_task(queue.hold("a", "m", 60.0))
    a2 = asyncio.create_task(queue.hold("a", "m", 60.0))
    await _waiting(queue, 2)
    assert await queue.hold("a", "m", 60.0) == "full"  # the key's share
    b1 = asyncio.create_task(queue.hold("b", "m", 60.0))
    await _waiting(queue, 3)
    assert await queue.hold("c", "m", 60.0) == "full"  # the whole queue
    assert queue.counts["full"] == 2 and queue.held == 3
    # a cancelled waiter leaves the queue, and its place is free again
    a2.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a2
    assert queue.held == 2
    # a request whose time runs out is refused, and leaves no place taken
    started = time.monotonic()
    assert await queue.hold("c", "m", 0.05) == "expired"
    assert 0.04 <= time.monotonic() - started < 2.0
    assert await queue.hold("c", "m", 0.0) == "expired"  # no time left at all
    assert queue.counts["expired"] == 2 and queue.held == 2
    # stopping answers everyone still held, and refuses whoever comes after
    await queue.close()
    assert await asyncio.gather(a1, b1) == ["closed", "closed"]
    assert queue.held == 0
    assert await queue.hold("d", "m", 60.0) == "closed"


def test_the_hold_verdict_is_for_batch_between_the_two_ceilings() -> None:
    adm = Admission(AdmissionConfig(interactive_max_load=3.0, batch_max_load=1.0, hold_batch=True))
    assert adm.by_load(0.5, 0.1, "m", "batch").verdict == "admit"
    held = adm.by_load(1.5, 0.1, "m", "batch")
    assert (held.verdict, held.reason) == ("hold", "capacity")
    assert adm.by_load(3.0, 0.1, "m", "batch").verdict == "refuse"  # interactive is full too
    assert adm.by_load(1.5, 0.1, "m", "interactive").verdict == "admit"
    off = Admission(AdmissionConfig(interactive_max_load=3.0, batch_max_load=1.0))
    assert off.by_load(1.5, 0.1, "m", "batch").verdict == "refuse"
    # the simulator's batch path has no queue: a hold is a refusal there
    import numpy as np

    assert adm.decide_batch(None, np.array([1e3]), np.array([1]), 1.5).tolist() == [2]


# --- through the router ----------------------------------------------------------------------

BATCH_KEY, OTHER_KEY = b"mrk_batch_key", b"mrk_other_key"


@pytest.fixture
async def holding_router(tmp_path: Path) -> AsyncIterator[tuple[RouterServer, StandInWorker]]:
    worker = StandInWorker("eu", delay_s=0.01)
    await worker.start()
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json", require_api_key=True,
                       admit_interactive_max_load=3.0, admit_batch_max_load=1.0,
                       hold_batch_max=2, hold_batch_max_wait_s=30.0),
        make_policy("meridian"),
    )  # fmt: skip
    w = WorkerView("eu-w1", worker.endpoint, HealthState.HEALTHY, ("m:1",), latency_p50_ms=100.0)
    region = RegionView("eu", HealthState.HEALTHY, 48.86, 2.35, capacity_rps=10.0, workers=(w,))
    server.store.offer(RoutingSnapshot(version=1, generated_at=time.time(), regions=(region,)))
    grants = tuple(
        ApiKeyGrant(name, digest(key), 1e6, 1e6, priority="batch")
        for name, key in (("nightly", BATCH_KEY), ("other", OTHER_KEY))
    )
    server.core.keyring.offer(ApiKeyring(1, time.time(), grants))
    await server.start()
    try:
        yield server, worker
    finally:
        await server.stop()
        await worker.stop()


def _request(key: bytes, deadline_ms: float | None = None) -> Request:
    headers = [(b"x-meridian-client-location", b"48.86,2.35"), (b"x-api-key", key)]
    if deadline_ms is not None:
        headers.append((b"x-meridian-deadline-ms", str(deadline_ms).encode()))
    return Request("POST", "/v2/models/m/infer", "", headers, b"{}", "127.0.0.1")


async def test_the_router_holds_batch_then_releases_it_as_the_load_falls(
    holding_router: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = holding_router
    core = server.core
    core.stats.on_dispatch("eu", time.monotonic())  # one in service: load 1 (10/s x 100 ms)
    held = asyncio.create_task(core.handle(_request(BATCH_KEY)))
    other = asyncio.create_task(core.handle(_request(OTHER_KEY)))
    await wait_until_async(lambda: core.hold.held == 2, timeout=5.0)
    full = await core.handle(_request(BATCH_KEY))  # two places, both taken
    assert isinstance(full, Response) and full.status == 503
    assert int(dict(full.headers)[b"retry-after"]) >= 1
    assert "places to wait" in orjson.loads(full.body)["error"]
    metrics = core.metrics.render().decode()
    assert "meridian_router_hold_held 2.0" in metrics
    assert 'meridian_router_hold_refused_total{reason="full"} 1.0' in metrics
    assert not worker.seen
    core.stats.on_success("eu", 0.0, 100.0, time.monotonic())  # it finished: room again
    answers = await asyncio.wait_for(asyncio.gather(held, other), 10.0)
    assert [a.status for a in answers] == [200, 200]
    assert len(worker.seen) == 2 and core.hold.held == 0
    metrics = core.metrics.render().decode()
    assert "meridian_router_hold_released_total 2.0" in metrics
    assert 'meridian_router_admission_admitted_total{priority="batch"} 2.0' in metrics


async def test_a_held_request_is_refused_when_its_deadline_or_the_router_stops_first(
    holding_router: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = holding_router
    core = server.core
    for _ in range(2):  # load 2: over the batch ceiling, under the interactive one
        core.stats.on_dispatch("eu", time.monotonic())
    started = time.monotonic()
    late = await core.handle(_request(BATCH_KEY, deadline_ms=400.0))
    waited = time.monotonic() - started
    assert isinstance(late, Response) and late.status == 503
    assert "deadline" in orjson.loads(late.body)["error"]
    assert waited < 0.4  # refused before its deadline, not at it
    assert core.hold.counts["expired"] == 1
    held = asyncio.create_task(core.handle(_request(BATCH_KEY)))
    await wait_until_async(lambda: core.hold.held == 1, timeout=5.0)
    await server.stop()  # nothing is left unanswered
    answer = await asyncio.wait_for(held, 5.0)
    assert isinstance(answer, Response) and answer.status == 503
    assert "shutting down" in orjson.loads(answer.body)["error"]
    assert not worker.seen and core.hold.held == 0


async def test_a_released_request_is_refused_if_what_is_left_of_its_deadline_is_too_short(
    holding_router: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = holding_router
    core = server.core
    for _ in range(2):
        core.stats.on_dispatch("eu", time.monotonic())
    held = asyncio.create_task(core.handle(_request(BATCH_KEY, deadline_ms=3000.0)))
    await wait_until_async(lambda: core.hold.held == 1, timeout=5.0)
    for _ in range(2):  # both finish (room again), after waiting 20 s in the queue
        core.stats.on_success("eu", 20_000.0, 100.0, time.monotonic())
    answer = await asyncio.wait_for(held, 5.0)
    assert isinstance(answer, Response) and answer.status == 503
    assert "cannot be met" in orjson.loads(answer.body)["error"]
    assert core.hold.counts["released"] == 1 and not worker.seen
