"""Herding-robust choice in the router: with ``spread_ms`` the first region is drawn among
those within the margin of the best (weighted by free servers), never outside it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.policies import MeridianPolicy, RouteRequest
from router.ranking import REPLICA_SPREAD_MS, make_policy
from router.server import RouterServer
from router.settings import RouterSettings

PARIS = (48.86, 2.35)
# Paris, Frankfurt and Brussels are within a few ms of a Paris client; Virginia is not
CITIES = {"paris": (48.86, 2.35), "frankfurt": (50.11, 8.68), "brussels": (50.85, 4.35),
          "virginia": (39.05, -77.49)}  # fmt: skip


def _snap() -> RoutingSnapshot:
    regions = tuple(
        RegionView(name, HealthState.HEALTHY, lat, lon, capacity_rps=100.0,
                   workers=(WorkerView(f"{name}-w", "http://x", HealthState.HEALTHY, ("m:1",)),))
        for name, (lat, lon) in CITIES.items()
    )  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=time.time(), regions=regions)


def test_make_policy_passes_the_spread() -> None:
    policy = make_policy("meridian", REPLICA_SPREAD_MS)
    assert isinstance(policy, MeridianPolicy) and policy.spread_ms == 20.0
    default = make_policy("meridian")
    assert isinstance(default, MeridianPolicy) and default.spread_ms == 0.0
    with pytest.raises(ValueError):
        make_policy("meridian", -1.0)
    assert RouterSettings(spread_ms=20.0).spread_ms == 20.0
    with pytest.raises(ValueError):
        RouterSettings(spread_ms=-5.0)


@pytest.mark.parametrize("spread_ms", [0.0, 3.0, 20.0])
def test_the_router_draws_among_near_best_regions_only(tmp_path: Path, spread_ms: float) -> None:
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "snap.json", spread_ms=spread_ms)
    server = RouterServer(settings, make_policy("meridian", settings.spread_ms))
    core, snap = server.core, _snap()
    route = RouteRequest("m", *PARIS)
    now = time.monotonic()
    cost = {name: core.policy.expected_ms(snap, core.stats, route, name, now) for name in CITIES}
    best = min(c for c in cost.values() if c is not None)
    near = {name for name, c in cost.items() if c is not None and c <= best + spread_ms}
    assert "virginia" not in near  # the margin never reaches across the Atlantic
    assert len(near) >= (3 if spread_ms >= 20.0 else 1)
    firsts = Counter(core.rank(snap, route, now)[0] for _ in range(600))
    assert set(firsts) <= near  # never a region outside the margin
    if len(near) == 1:  # no spread, or a margin only the best is within
        assert len(firsts) == 1
    else:
        assert set(firsts) == near  # every near-best region is drawn
        # equal free servers: about equal shares (600 draws; 5 sigma is about 100)
        assert max(firsts.values()) - min(firsts.values()) < 150 * (len(near) - 1)
    ranked = core.rank(snap, route, now)
    assert sorted(ranked) == sorted(CITIES)  # the rest stay as fallbacks for retries
