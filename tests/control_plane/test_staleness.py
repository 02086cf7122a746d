"""How stale a snapshot is, as the control plane vouches for it: republished by the leader
at least every ``refresh_s``, and never confirmed by a replica cut off from the store."""

from __future__ import annotations

import time

import httpx
from fastapi import FastAPI

from control_plane.api.fleet import fleet_router
from control_plane.health.fleet_view import FleetView
from control_plane.health.inventory import RegionRecord, RegistryView
from control_plane.health.snapshots import (
    KeyringPublisher,
    SnapshotFeed,
    SnapshotPublisher,
    build_snapshot,
)
from meridian.coordination import InProcessCoordination
from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.snapshot import RoutingSnapshot
from meridian.waiting import wait_until_async
from tests.tasks import running

REGISTRY = RegistryView((RegionRecord("eu", 53.3, -6.3),))


def _build(version: int) -> RoutingSnapshot:
    return build_snapshot(version, REGISTRY, {}, generated_at=time.time())


async def test_the_leader_republishes_an_unchanged_snapshot_every_refresh_period() -> None:
    coord = InProcessCoordination()
    feed = SnapshotFeed(coord)
    publisher = SnapshotPublisher(coord, _build, debounce_s=0.01, refresh_s=0.3)
    async with running(feed.run(), publisher.run()):
        await wait_until_async(lambda: feed.version == 1, timeout=2, what="first")
        first = feed.current
        assert first is not None
        await wait_until_async(lambda: feed.version == 2, timeout=2, what="the refresh")
        again = feed.current
        assert again is not None and again.regions == first.regions  # same content ...
        assert again.generated_at > first.generated_at  # ... vouched for again
    await coord.close()


async def test_unchanged_keys_are_republished_every_refresh_period_too() -> None:
    coord = InProcessCoordination()
    grant = ApiKeyGrant("acme", "ab" * 32, 1.0, 1.0)
    publisher = KeyringPublisher(coord, refresh_s=0.2)
    await publisher.new_term()
    assert await publisher.publish((grant,))
    assert not await publisher.publish((grant,))  # just published: nothing to say
    await wait_until_async(lambda: publisher.publish((grant,)), timeout=2, what="refresh")
    stored = await coord.get("/meridian/routing/api-keys")
    assert stored is not None and ApiKeyring.from_json(stored.value).version == 2
    # the next leader takes over a recent keyring: no republication at once
    successor = KeyringPublisher(coord, refresh_s=5.0)
    await successor.new_term()
    assert not await successor.publish((grant,))
    await coord.close()


async def test_a_replica_cut_off_from_the_store_does_not_answer_nothing_newer() -> None:
    coord = InProcessCoordination()
    await coord.put("/meridian/routing/snapshot", _build(3).to_json())
    feed = SnapshotFeed(coord)

    async def set_draining(region: str, draining: bool, actor: str) -> str:
        return "active"

    app = FastAPI()
    app.include_router(
        fleet_router(
            feed, FleetView(coord), set_draining, read_auth=lambda: None, admin_auth=lambda: None
        )
    )
    transport = httpx.ASGITransport(app=app)
    async with (
        running(feed.run()),
        httpx.AsyncClient(transport=transport, base_url="http://cp") as client,
    ):
        await wait_until_async(lambda: feed.live and feed.version == 3, timeout=2, what="sync")
        poll = {"if-none-match": '"3"'}
        r = await client.get("/v1/routing/snapshot", params={"wait": 0}, headers=poll)
        assert r.status_code == 304
        await coord.close()  # the store is gone for this replica
        await wait_until_async(lambda: not feed.live, timeout=2, what="the feed notices")
        r = await client.get("/v1/routing/snapshot", params={"wait": 0}, headers=poll)
        assert r.status_code == 503
        assert "cannot reach the coordination store" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        # a router with nothing at all still gets what the replica has (its age shows)
        r = await client.get("/v1/routing/snapshot")
        assert r.status_code == 200 and r.headers["etag"] == '"3"'
