"""Policy lookup by name for the router process."""

from __future__ import annotations

import math
from collections.abc import Sequence

from meridian.snapshot import RegionView, RoutingSnapshot
from router.core import Ranker, RouterStats
from router.locate import Location

__all__ = ["NearestRanker", "make_ranker"]


class NearestRanker:
    """Routable regions serving the model, nearest (great-circle) first."""

    def rank(
        self,
        snapshot: RoutingSnapshot,
        model: str,
        version: str | None,
        client: Location,
        stats: RouterStats,
        now: float,
    ) -> Sequence[RegionView]:
        regions = [r for r in snapshot.routable_regions() if r.serves(model)]
        return sorted(regions, key=lambda r: _km(client.lat, client.lon, r.lat, r.lon))


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 12742.0 * math.asin(math.sqrt(a))


def make_ranker(name: str) -> Ranker:
    if name in ("nearest", "meridian"):
        return NearestRanker()
    raise SystemExit(f"unknown routing policy '{name}' (known: meridian, nearest)")
