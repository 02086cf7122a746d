"""Which regions go in which wave, and the traffic weights of a canary step (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RegionSize", "continent", "default_waves", "split_weight"]


@dataclass(frozen=True, slots=True)
class RegionSize:
    name: str
    lat: float
    lon: float
    size: float  # what makes a region large: its GPUs (or replicas of the model)


def continent(lat: float, lon: float) -> str:
    """A coarse continent from coordinates (enough to keep a wave on one continent)."""
    if lon < -30:
        return "south-america" if lat < 12 else "north-america"
    if lon < 60:
        if lat < 35 and not (lat > 12 and lon > 35):
            return "africa"
        return "europe" if lat >= 35 else "middle-east"
    return "oceania" if lat < -10 else "asia"


def default_waves(regions: Sequence[RegionSize]) -> list[list[str]]:
    """One small region first (the least blast radius), then one wave per continent,
    smaller continents first, so the largest share of traffic changes last."""
    if not regions:
        return []
    ordered = sorted(regions, key=lambda r: (r.size, r.name))
    first = ordered[0]
    groups: dict[str, list[RegionSize]] = {}
    for r in ordered[1:]:
        groups.setdefault(continent(r.lat, r.lon), []).append(r)
    rest = sorted(groups.values(), key=lambda g: (sum(r.size for r in g), g[0].name))
    return [[first.name]] + [[r.name for r in group] for group in rest]


def split_weight(weight: float, share: float) -> tuple[float, float]:
    """The old and new versions' traffic weights in a region whose old deployment weighed
    ``weight``, with the new one taking ``share`` of it."""
    total = weight if weight > 0 else 1.0
    return round(total * (1.0 - share), 6), round(total * share, 6)
