"""The router's staleness figures: measured from the snapshot's generation by the leader."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import Path

import httpx

from meridian.keyring import ApiKeyring
from meridian.snapshot import RoutingSnapshot
from meridian.waiting import wait_until_async
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from router.snapshot_store import HttpFollower, SnapshotStore


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_a_router_on_its_saved_files_reports_their_age(tmp_path: Path) -> None:
    generated = time.time() - 90.0  # written by a leader 90 s ago
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", require_api_key=True)
    (tmp_path / "s.json").write_bytes(RoutingSnapshot(4, generated).to_json())
    settings.resolved_keyring_path.write_bytes(ApiKeyring(2, generated - 30.0).to_json())
    server = RouterServer(settings, NearestPolicy())
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            ready = (await client.get("/v2/health/ready")).json()
            metrics = (await client.get("/metrics")).text
    finally:
        await server.stop()
    assert 90.0 <= ready["snapshot_confirmed_age_s"] < 150.0
    assert 120.0 <= ready["keyring_confirmed_age_s"] < 180.0
    assert 90.0 <= _metric(metrics, "meridian_router_snapshot_confirmed_age_seconds") < 150.0
    assert 120.0 <= _metric(metrics, "meridian_router_keyring_confirmed_age_seconds") < 180.0


async def test_nothing_newer_from_a_replica_does_not_make_the_snapshot_younger() -> None:
    """A replica answering 304 cannot vouch for the snapshot; only a leader's new one can."""
    old = RoutingSnapshot(7, time.time() - 60.0)
    answers: list[int] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)  # the long-poll's wait, elapsed: nothing newer
        answers.append(304)
        return httpx.Response(304, headers={"etag": '"7"'})

    store = SnapshotStore()
    store.offer(old)
    follower = HttpFollower(
        store, ["http://cp"], "t", wait_s=0.01, transport=httpx.MockTransport(handler)
    )
    task = asyncio.create_task(follower.run())
    try:
        await wait_until_async(lambda: len(answers) >= 5, timeout=5, what="long-polls")
        age = store.confirmed_age()
        assert age is not None and age >= 60.0
        heard = store.heard_age()
        assert heard is not None and heard < 5.0  # the source did answer, just now
        store.offer(replace(old, version=8, generated_at=time.time()))  # the leader's word
        age = store.confirmed_age()
        assert age is not None and age < 5.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
