"""The router follows the snapshot key through the coordination backend (etcd in production)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meridian.coordination import Coordination, open_coordination
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot
from meridian.waiting import wait_until_async
from router.snapshot_store import CoordinationFollower, SnapshotStore


def _snap(version: int) -> RoutingSnapshot:
    region = RegionView("eu-central-1", HealthState.HEALTHY, 50.1, 8.7, capacity_rps=10.0)
    return RoutingSnapshot(version=version, generated_at=0.0, regions=(region,))


@pytest.fixture(params=["memory", "etcd"])
async def coord(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    if request.param == "memory":
        backend = open_coordination("memory://")
    else:
        endpoint = request.getfixturevalue("etcd_endpoint")
        backend = open_coordination(f"etcd://{endpoint}")
    try:
        yield backend
    finally:
        await backend.close()


async def test_follower_takes_existing_and_newer_snapshots(
    coord: Coordination, tmp_path: Path
) -> None:
    key = f"/test-{uuid.uuid4().hex}/routing/snapshot"
    await coord.put(key, _snap(3).to_json())
    store = SnapshotStore(tmp_path / "snap.json")
    follower = CoordinationFollower(store, coord, key)
    task = asyncio.create_task(follower.run())
    try:
        await wait_until_async(lambda: store.current is not None, timeout=5, what="first")
        assert store.current is not None and store.current.version == 3
        await coord.put(key, b"not json")  # a bad document is ignored, not fatal
        await coord.put(key, _snap(2).to_json())  # older: ignored
        await coord.put(key, _snap(5).to_json())
        await wait_until_async(
            lambda: store.current is not None and store.current.version == 5,
            timeout=5,
            what="newer snapshot",
        )
        assert RoutingSnapshot.from_json((tmp_path / "snap.json").read_bytes()).version == 5
        assert store.confirmed_age() is not None
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_follower_keeps_the_snapshot_when_the_backend_fails(tmp_path: Path) -> None:
    from meridian.net import free_port

    store = SnapshotStore(tmp_path / "snap.json")
    store.offer(_snap(7))
    dead = open_coordination(f"etcd://127.0.0.1:{free_port()}")
    follower = CoordinationFollower(store, dead)
    task = asyncio.create_task(follower.run())
    try:
        await wait_until_async(lambda: follower.last_error != "", timeout=10, what="an error")
        assert store.current is not None and store.current.version == 7
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            await dead.close()
