"""A region published down only for want of agent reports is routed on its last monitored
view, for the grace period only, and only while the control plane has nothing else to say."""

from __future__ import annotations

from dataclasses import replace

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.unmonitored import UnmonitoredRegions

WORKER = WorkerView("w0", "http://127.0.0.1:9000", HealthState.HEALTHY, ("m:1",))
EAST = RegionView("east", HealthState.HEALTHY, 40.0, -74.0, workers=(WORKER,))


def _snap(version: int, east: RegionView) -> RoutingSnapshot:
    return RoutingSnapshot(version, 0.0, (east,))


def test_an_unmonitored_region_is_held_for_the_grace_only() -> None:
    now = [1000.0]
    hold = UnmonitoredRegions(60.0, clock=lambda: now[0])
    assert hold.view(_snap(1, EAST)).region("east") == EAST
    lost = RegionView("east", HealthState.DOWN, 40.0, -74.0, unmonitored_since=990.0)
    held = hold.view(_snap(2, lost)).region("east")
    assert held is not None and held.state.routable and held.workers == (WORKER,)
    assert held.unmonitored_since == 990.0 and hold.held == {"east"}
    now[0] = 1051.0  # 61 s after the agent went silent
    assert hold.view(_snap(3, lost)).region("east") == lost
    assert hold.held == set()


def test_a_region_down_on_evidence_or_drained_is_believed() -> None:
    hold = UnmonitoredRegions(60.0, clock=lambda: 1000.0)
    hold.view(_snap(1, EAST))
    down = replace(EAST, state=HealthState.DOWN, workers=())  # reported down: no mark
    assert hold.view(_snap(2, down)).region("east") == down
    lost = RegionView("east", HealthState.DOWN, 40.0, -74.0, unmonitored_since=999.0)
    assert hold.view(_snap(3, lost)).region("east") == lost  # nothing monitored to keep
    assert hold.held == set()


def test_a_snapshot_from_a_newer_control_plane_still_parses() -> None:
    from meridian.snapshot import RoutingSnapshot

    raw = {
        "version": 3,
        "generated_at": 1.0,
        "future_top_level": 1,
        "regions": [
            {
                "name": "eu",
                "state": "healthy",
                "lat": 53.3,
                "lon": -6.3,
                "future_region_field": {"x": 1},
                "workers": [
                    {
                        "worker_id": "eu/w0",
                        "endpoint": "http://127.0.0.1:1",
                        "state": "healthy",
                        "models": ["m:1"],
                        "future_worker_field": 2,
                    }
                ],
            }
        ],
        "deployments": [],
    }
    snap = RoutingSnapshot.from_dict(raw)
    assert snap.version == 3
    assert snap.regions[0].name == "eu"
    assert snap.regions[0].workers[0].models == ("m:1",)
