"""A worker replaced by another artifact is replaced make-before-break: the old process
serves until the new one is ready, so the region never has no ready worker for it."""

from __future__ import annotations

import asyncio
import time

from region_agent.supervisor import LocalProcessSupervisor, WorkerSpec
from tests.region_agent.test_supervisor import COMMAND, alive


async def test_a_replaced_worker_serves_until_its_successor_is_ready() -> None:
    sup = LocalProcessSupervisor(
        command=COMMAND, scrape_interval_s=0.05, drain_min_s=0.2, drain_grace_s=1.0
    )
    await sup.start()
    try:
        await sup.apply([WorkerSpec("resnet", "1", artifact_sha256="a" * 64)])
        deadline = time.monotonic() + 10
        while not any(s.ready for s in sup.statuses()):
            assert time.monotonic() < deadline, "no ready worker"
            await asyncio.sleep(0.01)
        old = sup.pid("resnet-1-base-0")
        assert old is not None
        await sup.apply([WorkerSpec("resnet", "1", artifact_sha256="b" * 64)])
        fewest = 1
        deadline = time.monotonic() + 15
        while alive(old) or [s.worker_id for s in sup.statuses()] != ["resnet-1-base-0"]:
            serving = [s for s in sup.statuses() if s.ready and not s.draining]
            fewest = min(fewest, len(serving))
            assert time.monotonic() < deadline, f"not replaced: {sup.statuses()}"
            await asyncio.sleep(0.01)
        assert fewest == 1, "a moment with no ready worker during the replacement"
        assert sup.pid("resnet-1-base-0") not in (None, old)
    finally:
        await sup.close()
