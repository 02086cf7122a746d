"""Scale-down without losing a request: a worker no longer wanted drains, then stops."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meridian.waiting import wait_until_async
from region_agent.supervisor import LocalProcessSupervisor, WorkerSpec

BUSY = str(Path(__file__).resolve().parents[2] / "bench" / "busy_worker.py")
COMMAND = [sys.executable, BUSY, "--port", "{port}", "--model", "{model}", "--version",
           "{version}", "--delay-ms", "40"]  # fmt: skip


@pytest.fixture
async def supervisor() -> AsyncIterator[LocalProcessSupervisor]:
    sup = LocalProcessSupervisor(
        command=COMMAND, scrape_interval_s=0.1, drain_min_s=0.6, drain_grace_s=20.0
    )
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


def by_id(sup: LocalProcessSupervisor) -> dict[str, object]:
    return {s.worker_id: s for s in sup.statuses()}


async def test_a_removed_worker_drains_its_traffic_then_stops(supervisor) -> None:
    await supervisor.apply([WorkerSpec("m", "1", replicas=2)])
    await wait_until_async(
        lambda: sum(1 for s in supervisor.statuses() if s.ready) == 2, timeout=15, what="2 ready"
    )
    leaving = next(s for s in supervisor.statuses() if s.worker_id == "m-1-base-1")
    pid = supervisor.pid("m-1-base-1")
    assert pid is not None
    url = leaving.endpoint + "/v2/models/m/infer"
    results: list[int] = []

    async with httpx.AsyncClient(timeout=10) as client:

        async def stale_router(until: float) -> None:
            """Keeps sending to the leaving worker, as a router on an old snapshot would."""
            while time.monotonic() < until:
                results.append((await client.post(url, content=b"{}")).status_code)

        # short requests until shortly after the scale-down (routers learn within drain_min),
        # and one long request that is still running past drain_min
        until = time.monotonic() + 0.6
        senders = [asyncio.create_task(stale_router(until)) for _ in range(4)]
        await asyncio.sleep(0.2)  # traffic is flowing before the scale-down
        long = asyncio.create_task(client.post(url + "?delay_ms=2000", content=b"{}"))
        await asyncio.sleep(0.1)
        await supervisor.apply([WorkerSpec("m", "1", replicas=1)])
        status = by_id(supervisor)["m-1-base-1"]
        assert status.draining and status.ready  # type: ignore[attr-defined]
        assert not by_id(supervisor)["m-1-base-0"].draining  # type: ignore[attr-defined]
        await asyncio.gather(*senders)
        await asyncio.sleep(1.0)  # past drain_min_s, the long request still runs
        assert supervisor.pid("m-1-base-1") == pid and not long.done()
        results.append((await long).status_code)
    await wait_until_async(
        lambda: "m-1-base-1" not in by_id(supervisor), timeout=10, what="drained worker stopped"
    )
    assert len(results) > 10 and set(results) == {200}  # nothing lost
    assert list(by_id(supervisor)) == ["m-1-base-0"]


async def test_wanted_again_while_draining_keeps_the_same_process(supervisor) -> None:
    sup = supervisor
    await sup.apply([WorkerSpec("m", "1", replicas=2)])
    await wait_until_async(lambda: sum(1 for s in sup.statuses() if s.ready) == 2, timeout=15)
    pid = sup.pid("m-1-base-1")
    await sup.apply([WorkerSpec("m", "1", replicas=1)])
    assert by_id(sup)["m-1-base-1"].draining  # type: ignore[attr-defined]
    await sup.apply([WorkerSpec("m", "1", replicas=2)])
    assert not by_id(sup)["m-1-base-1"].draining  # type: ignore[attr-defined]
    assert sup.pid("m-1-base-1") == pid


async def test_a_worker_that_never_became_ready_is_stopped_at_once(supervisor) -> None:
    sup = LocalProcessSupervisor(command=[sys.executable, "-c", "import time; time.sleep(60)"],
                                 scrape_interval_s=0.1)  # fmt: skip
    await sup.start()
    try:
        await sup.apply([WorkerSpec("m", "1", replicas=1)])
        await wait_until_async(lambda: sup.pid("m-1-base-0") is not None, timeout=10)
        await sup.apply([])
        assert sup.statuses() == []
    finally:
        await sup.close()
