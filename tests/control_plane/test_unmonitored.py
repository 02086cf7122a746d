"""A region down for want of agent reports is published marked ``unmonitored_since``, from
the moment it went silent (kept across publications); a disabled region never is."""

from __future__ import annotations

import pytest

from control_plane.health.inventory import RegionRecord, RegistryView
from control_plane.health.snapshots import SnapshotFeed, SnapshotPublisher, build_snapshot
from meridian.coordination import InProcessCoordination
from meridian.snapshot import HealthState
from meridian.waiting import wait_until_async
from tests.control_plane.test_snapshots import summary
from tests.tasks import running


def test_a_silent_region_is_marked_and_a_disabled_one_is_not() -> None:
    registry = RegistryView(
        (RegionRecord("eu", 0, 0), RegionRecord("us", 0, 0),
         RegionRecord("old", 0, 0, status="disabled"), RegionRecord("out", 0, 0,
         status="draining"))
    )  # fmt: skip
    snap = build_snapshot(1, registry, {"eu": summary("a", HealthState.HEALTHY, 1.0)},
                          generated_at=50.0)  # fmt: skip
    marks = {r.name: (r.state, r.unmonitored_since) for r in snap.regions}
    assert marks == {
        "eu": (HealthState.HEALTHY, 0.0),
        "us": (HealthState.DOWN, 50.0),  # no agent reports
        "old": (HealthState.DOWN, 0.0),  # an operator's word
        "out": (HealthState.DOWN, 0.0),  # an operator's word too
    }


async def test_the_mark_keeps_the_time_the_region_went_silent() -> None:
    coord = InProcessCoordination()
    registry = RegistryView((RegionRecord("eu", 0, 0),))
    state = {"eu": summary("a", HealthState.HEALTHY, 1.0)}
    clock = [100.0]

    def build(version: int):  # type: ignore[no-untyped-def]
        return build_snapshot(version, registry, state, generated_at=clock[0])

    feed = SnapshotFeed(coord)
    publisher = SnapshotPublisher(coord, build, debounce_s=0.01, load_interval_s=0.05)
    async with running(feed.run()), running(publisher.run()):
        await wait_until_async(lambda: feed.version == 1, timeout=2)
        del state["eu"]  # the agent is gone: its summary lapsed
        clock[0] = 200.0
        publisher.mark()
        await wait_until_async(lambda: feed.version == 2, timeout=2)
        clock[0] = 300.0
        publisher.mark()  # same content: the mark is not renewed, nothing new to publish
        with pytest.raises(TimeoutError):
            await wait_until_async(lambda: feed.version > 2, timeout=0.3)
        region = feed.current.region("eu") if feed.current else None
        assert region is not None and region.unmonitored_since == 200.0
        assert region.state == HealthState.DOWN
    await coord.close()
