"""An agent's next life adopts the workers of its previous one, from the record in its
state directory: the wanted ones are kept (same processes), the others stopped."""

from __future__ import annotations

import json
from pathlib import Path

from meridian.waiting import wait_until_async
from region_agent.supervisor import LocalProcessSupervisor, WorkerSpec
from tests.region_agent.test_supervisor import COMMAND, alive, ready_ids


def _supervisor(state_dir: Path) -> LocalProcessSupervisor:
    return LocalProcessSupervisor(
        command=COMMAND, scrape_interval_s=0.1, drain_min_s=0.2, drain_grace_s=1.0,
        state_dir=state_dir,
    )  # fmt: skip


async def test_a_new_life_adopts_the_wanted_workers_and_stops_the_rest(tmp_path: Path) -> None:
    first = _supervisor(tmp_path)
    await first.start()
    await first.apply([WorkerSpec("resnet", "1", replicas=2)])
    ids = {"resnet-1-base-0", "resnet-1-base-1"}
    await wait_until_async(lambda: ready_ids(first) == ids, timeout=10, what="two workers")
    pids = {w: first.pid(w) for w in ids}
    recorded = json.loads((tmp_path / "workers.json").read_text())["workers"]
    assert {(w["worker_id"], w["pid"]) for w in recorded} == set(pids.items())
    first.abandon()  # the agent dies: its workers run on

    second = _supervisor(tmp_path)
    await second.start()
    try:
        assert ready_ids(second) == ids  # adopted and reported at once
        assert {w: second.pid(w) for w in ids} == pids
        await second.apply([WorkerSpec("resnet", "1", replicas=1)])
        gone = pids["resnet-1-base-1"]
        assert gone is not None
        await wait_until_async(lambda: not alive(gone), timeout=10, what="the unwanted stopped")
        assert second.pid("resnet-1-base-0") == pids["resnet-1-base-0"]  # kept, not replaced
        # an adopted worker is not this process's child: its exit is seen at the next scrape
        await wait_until_async(
            lambda: ready_ids(second) == {"resnet-1-base-0"}, timeout=10, what="one reported"
        )
        assert second.pid("resnet-1-base-0") == pids["resnet-1-base-0"]
    finally:
        await second.close()
    left = [p for p in pids.values() if p is not None]
    # (the first life's children are reaped by this process, a moment after they exit)
    await wait_until_async(lambda: not any(alive(p) for p in left), timeout=5, what="all gone")
    assert json.loads((tmp_path / "workers.json").read_text())["workers"] == []
