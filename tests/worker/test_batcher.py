"""The batcher on its own: fill deadline, batches gathered while the engine runs, stopping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from meridian.errors import Unavailable, UpstreamTimeout
from meridian.waiting import wait_until_async
from tests.worker.inprocess import GateEngine
from worker.batcher import BatchPolicy, DynamicBatcher
from worker.metrics import WorkerMetrics


@pytest.fixture
async def engine() -> AsyncIterator[GateEngine]:
    gate = GateEngine()
    yield gate
    gate.gate.set()


def _batcher(engine: GateEngine, **policy: float) -> DynamicBatcher:
    batcher = DynamicBatcher(
        "gate:1",
        engine.run,
        policy=BatchPolicy(**policy),  # type: ignore[arg-type]
        batchable=True,
        executor=ThreadPoolExecutor(1),
        metrics=WorkerMetrics(),
    )
    batcher.start()
    return batcher


def _row(value: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), value, np.float32)}


async def test_a_lone_request_runs_at_once_and_a_short_batch_at_the_deadline(
    engine: GateEngine,
) -> None:
    batcher = _batcher(engine, max_queue_delay_s=0.05)
    assert (await batcher.infer(_row(1)))["y"].tolist() == [[2.0, 2.0]]
    # A batch of three makes the batcher wait for three; two come, the deadline runs them.
    engine.gate.clear()
    held = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    three = [batcher.submit(_row(v)) for v in (1, 2, 3)]
    engine.gate.set()
    await asyncio.gather(held, *three)
    loop = asyncio.get_running_loop()
    started = loop.time()
    pair = await asyncio.gather(batcher.infer(_row(4)), batcher.infer(_row(5)))
    assert loop.time() - started >= 0.04
    assert [p["y"][0, 0] for p in pair] == [8.0, 10.0]
    assert engine.batches == [(1, 2), (1, 2), (3, 2), (2, 2)]
    await batcher.stop()


async def test_the_next_batch_gathers_while_the_engine_runs(engine: GateEngine) -> None:
    batcher = _batcher(engine, max_queue_delay_s=0.0, max_batch_size=4)
    engine.gate.clear()
    first = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    queued = [batcher.submit(_row(v)) for v in range(1, 7)]
    assert batcher.stats.queue_depth == 6
    engine.gate.set()
    results = await asyncio.gather(first, *queued)
    assert [r["y"][0, 0] for r in results] == [2.0 * v for v in range(7)]
    assert engine.batches == [(1, 2), (4, 2), (2, 2)]
    await batcher.stop()


async def test_cancelled_requests_are_skipped(engine: GateEngine) -> None:
    batcher = _batcher(engine, max_queue_delay_s=0.0)
    engine.gate.clear()
    first = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    gone, kept = batcher.submit(_row(1)), batcher.submit(_row(2))
    gone.cancel()
    await asyncio.sleep(0)
    assert batcher.stats.queue_depth == 1 and batcher.stats.dropped == 1
    engine.gate.set()
    await first
    assert (await kept)["y"][0, 0] == 4.0
    assert engine.batches == [(1, 2), (1, 2)]
    await batcher.stop()


async def test_stopping_answers_the_queue_or_refuses_it_past_the_drain_time(
    engine: GateEngine,
) -> None:
    batcher = _batcher(engine, max_queue_delay_s=0.0)
    engine.gate.clear()
    running = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    queued = batcher.submit(_row(1))
    await batcher.stop(drain_s=0.05)
    with pytest.raises(Unavailable):
        await queued
    with pytest.raises(Unavailable):
        batcher.submit(_row(2))
    engine.gate.set()
    assert (await running)["y"][0, 0] == 0.0  # the batch in the engine still finishes


async def test_a_request_whose_deadline_passes_in_the_queue_is_dropped_before_running(
    engine: GateEngine,
) -> None:
    batcher = _batcher(engine, max_queue_delay_s=0.0, max_batch_size=1)
    engine.gate.clear()
    busy = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    loop = asyncio.get_running_loop()
    started = loop.time()
    late = batcher.submit(_row(1), deadline=time.monotonic() + 0.05)
    kept = batcher.submit(_row(2), deadline=time.monotonic() + 30.0)
    with pytest.raises(UpstreamTimeout, match=r"deadline passed after .* dropped before running"):
        await late
    assert loop.time() - started < 1.0  # answered when it expired, not when the engine freed
    assert batcher.stats.deadline_dropped == 1
    assert batcher.stats.queue_depth == 1
    engine.gate.set()
    assert (await busy)["y"][0, 0] == 0.0
    assert (await kept)["y"][0, 0] == 4.0
    assert engine.batches == [(1, 2), (1, 2)]  # the expired row never reached the engine
    assert batcher.stats.in_flight == 0
    assert batcher.stats.deadline_dropped == 1
    await batcher.stop()


async def test_on_a_stalled_loop_the_queue_deadline_still_says_why(engine: GateEngine) -> None:
    # the queue's deadline and the caller's timeout (a gRPC call's, a little later) come
    # due in one turn of a loop that was blocked past both: the answer is the queue's
    batcher = _batcher(engine, max_queue_delay_s=0.0, max_batch_size=1)
    engine.gate.clear()
    busy = batcher.submit(_row(0))
    await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
    late = batcher.submit(_row(1), deadline=time.monotonic() + 0.05)
    waiting = asyncio.create_task(batcher.wait(late, 0.06))
    await asyncio.sleep(0)  # the caller waits on both timers
    time.sleep(0.2)  # noqa: ASYNC251  (the loop is blocked past both: a stall)
    with pytest.raises(UpstreamTimeout, match=r"deadline passed after"):
        await waiting
    assert batcher.stats.deadline_dropped == 1
    engine.gate.set()
    await busy
    await batcher.stop()
