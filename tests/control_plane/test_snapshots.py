"""Fleet view merging, snapshot building and publishing on in-process coordination."""

from __future__ import annotations

import pytest

from control_plane.health.fleet_view import FleetView
from control_plane.health.inventory import DeploymentRecord, RegionRecord, RegistryView
from control_plane.health.ledger import Change
from control_plane.health.snapshots import (
    KEYRING_KEY,
    KeyringFeed,
    KeyringPublisher,
    SnapshotFeed,
    SnapshotPublisher,
    build_snapshot,
)
from control_plane.health.summary import RegionSummary, WorkerSummary
from meridian.coordination import InProcessCoordination
from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.snapshot import HealthState, RoutingSnapshot
from meridian.waiting import wait_until_async
from tests.tasks import running

PREFIX = "/meridian/fleet/regions/"


def summary(replica: str, state: HealthState, at: float, workers: int = 1) -> RegionSummary:
    return RegionSummary(
        region="eu",
        replica=replica,
        state=state,
        last_report_at=at,
        workers=tuple(
            WorkerSummary(f"w{i}", f"http://h:{i}", HealthState.HEALTHY, models=("m:1",),
                          queue_depth=2, throughput_rps=5.0, capacity_rps=20.0)
            for i in range(workers)
        ),
    )  # fmt: skip


async def test_fleet_view_merges_replicas_newest_report_wins() -> None:
    coord = InProcessCoordination()
    changes: list[Change] = []
    view = FleetView(coord, on_change=lambda _r, c: changes.append(c))
    async with running(view.run()):
        await wait_until_async(view.synced.is_set, timeout=2)
        await coord.put(PREFIX + "eu/a", summary("a", HealthState.HEALTHY, 10.0).to_json())
        await wait_until_async(lambda: view.summary("eu"), timeout=2)
        # the agent moved to replica b: its newer report wins
        await coord.put(PREFIX + "eu/b", summary("b", HealthState.DEGRADED, 20.0).to_json())
        await wait_until_async(
            lambda: view.summary("eu").replica == "b",
            timeout=2,  # type: ignore[union-attr]
        )
        await coord.put(PREFIX + "eu/bad", b"{not json")  # ignored, the view survives
        await coord.delete(PREFIX + "eu/b")
        await wait_until_async(
            lambda: view.summary("eu").replica == "a",
            timeout=2,  # type: ignore[union-attr]
        )
        await coord.delete(PREFIX + "eu/a")
        await wait_until_async(lambda: view.summary("eu") is None, timeout=2)
    assert changes.count(Change.STATE) == 4
    await coord.close()


def test_build_snapshot_applies_registry_status() -> None:
    registry = RegistryView(
        (
            RegionRecord("eu", 53.3, -6.3, "H100", 8),
            RegionRecord("us", 39.0, -77.5, status="draining"),
            RegionRecord("ap", 19.1, 72.9),
            RegionRecord("old", 0, 0, status="disabled"),
        ),
        (DeploymentRecord("m", "1", "eu", traffic_weight=0.9, degrade_to="int8"),
         DeploymentRecord("m", "2", "eu", traffic_weight=0.1, variant="int8")),
    )  # fmt: skip
    summaries = {
        "eu": summary("a", HealthState.HEALTHY, 1.0, workers=2),
        "us": summary("a", HealthState.HEALTHY, 1.0),
        "old": summary("a", HealthState.HEALTHY, 1.0),
    }
    snap = build_snapshot(7, registry, summaries, generated_at=1.0)
    states = {r.name: r.state for r in snap.regions}
    assert states == {
        "eu": HealthState.HEALTHY,
        "us": HealthState.DRAINING,
        "ap": HealthState.DOWN,  # no agent
        "old": HealthState.DOWN,  # disabled
    }
    eu = snap.region("eu")
    assert eu is not None and eu.capacity_rps == 40.0 and eu.queue_depth == 4
    assert eu.lat == 53.3 and eu.gpu_type == "H100"
    assert [(d.version, d.weight, d.variant, d.degrade_to) for d in snap.deployments] == [
        ("1", 0.9, "", "int8"),
        ("2", 0.1, "int8", ""),
    ]
    assert [w.capacity_rps for w in eu.workers] == [20.0, 20.0]  # each worker's, for brownout
    # the JSON form the routers receive and keep on disk carries the same
    assert RoutingSnapshot.from_json(snap.to_json()) == snap


async def test_versions_grow_across_leaders_and_identical_content_is_not_republished() -> None:
    coord = InProcessCoordination()
    registry = RegistryView((RegionRecord("eu", 0, 0),))
    state = {"eu": summary("a", HealthState.HEALTHY, 1.0)}

    def build(version: int):  # type: ignore[no-untyped-def]
        return build_snapshot(version, registry, state, generated_at=0.0)

    feed = SnapshotFeed(coord)
    first = SnapshotPublisher(coord, build, debounce_s=0.01, load_interval_s=0.1)
    async with running(feed.run()):
        async with running(first.run()):
            await wait_until_async(lambda: feed.version == 1, timeout=2)
            first.mark()  # nothing new to say: no publication within a few debounce windows
            with pytest.raises(TimeoutError):
                await wait_until_async(lambda: first.publications > 1, timeout=0.2)
            state["eu"] = summary("a", HealthState.DEGRADED, 2.0)
            first.mark()
            await wait_until_async(lambda: feed.version == 2, timeout=2)
        second = SnapshotPublisher(coord, build, debounce_s=0.01)  # the next leader
        async with running(second.run()):
            await wait_until_async(lambda: feed.version == 3, timeout=2)
    current = feed.current
    assert current is not None and current.region("eu").state == HealthState.DEGRADED  # type: ignore[union-attr]
    with pytest.raises(TimeoutError):
        await wait_until_async(lambda: feed.version > 3, timeout=0.2)
    await coord.close()


async def test_keyring_versions_grow_across_leaders_and_unchanged_keys_are_not_republished() -> (
    None
):
    coord = InProcessCoordination()
    acme = ApiKeyGrant("acme", "ab" * 32, 5.0, 10.0, ("m",))
    beta = ApiKeyGrant("beta", "cd" * 32, 1.0, 1.0)
    try:
        first = KeyringPublisher(coord)
        await first.new_term()
        assert await first.publish((acme,)) is True
        assert await first.publish((acme,)) is False  # nothing changed
        assert await first.publish((acme, beta)) is True
        assert first.version == 2
        # a new leader continues from the stored version and does not repeat it
        second = KeyringPublisher(coord)
        await second.new_term()
        assert await second.publish((acme, beta)) is False
        assert await second.publish((beta,)) is True
        stored = await coord.get(KEYRING_KEY)
        assert stored is not None
        ring = ApiKeyring.from_json(stored.value)
        assert (ring.version, ring.keys) == (3, (beta,))
        # every replica's feed holds the latest
        feed = KeyringFeed(coord)
        async with running(feed.run()):
            await wait_until_async(lambda: feed.version == 3, timeout=5, what="feed at v3")
        assert feed.current is not None and feed.current.keys == (beta,)
    finally:
        await coord.close()
