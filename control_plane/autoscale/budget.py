"""The global GPU budget: a pure allocator of scarce GPUs to the deployments that want them.

Operators set how many GPUs of each type the whole fleet may use (across every
region), and each region has a physical number of GPUs. When the replicas the
autoscaler wants fit, everyone gets what they asked for. When they do not, GPUs
go where they serve the most traffic: minimums first (busiest first), then one
replica at a time to the claim whose next replica would carry the most unmet
demand. What a region is refused spills to other regions through routing (the
router charges a saturated region its queueing delay), not through this function.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Allocation", "Claim", "allocate"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What one deployment wants."""

    key: Hashable
    region: str
    gpu_type: str
    desired: int  # replicas the autoscaler wants
    minimum: int = 0
    demand: float = 0.0  # in workers (the policy's stable demand): what a replica would carry
    gpus_per_replica: int = 1


@dataclass(frozen=True, slots=True)
class Allocation:
    granted: dict[Hashable, int]
    # per key: a short reason when a claim got less than it asked for
    limited: dict[Hashable, str]


def allocate(
    claims: Sequence[Claim],
    budget: Mapping[str, int],
    region_gpus: Mapping[str, int] | None = None,
) -> Allocation:
    """Grant replicas within ``budget`` (GPUs per type; a type absent is unlimited) and
    ``region_gpus`` (GPUs per region; absent is unlimited)."""
    left_type = dict(budget)
    left_region = dict(region_gpus or {})
    granted: dict[Hashable, int] = {c.key: 0 for c in claims}

    def fits(c: Claim) -> bool:
        g = c.gpus_per_replica
        if c.gpu_type in left_type and left_type[c.gpu_type] < g:
            return False
        return not (c.region in left_region and left_region[c.region] < g)

    def take(c: Claim) -> None:
        if c.gpu_type in left_type:
            left_type[c.gpu_type] -= c.gpus_per_replica
        if c.region in left_region:
            left_region[c.region] -= c.gpus_per_replica
        granted[c.key] += 1

    # minimums first, the busiest deployments first
    for c in sorted(claims, key=lambda c: (-c.demand, str(c.key))):
        while granted[c.key] < min(c.minimum, c.desired) and fits(c):
            take(c)

    # then the rest, one replica at a time where the next one carries the most demand;
    # a claim's priority only changes when it is granted, so the heap stays exact
    def gain(c: Claim) -> float:
        return min(1.0, max(0.0, c.demand - granted[c.key]))

    def share(c: Claim) -> float:  # equal gains: the least served (for its demand) first
        return granted[c.key] / c.demand if c.demand > 0 else float(granted[c.key])

    heap = [(-gain(c), share(c), i) for i, c in enumerate(claims) if granted[c.key] < c.desired]
    heapq.heapify(heap)
    while heap:
        _, _, i = heapq.heappop(heap)
        c = claims[i]
        if not fits(c):
            continue
        take(c)
        if granted[c.key] < c.desired:
            heapq.heappush(heap, (-gain(c), share(c), i))

    limited: dict[Hashable, str] = {}
    for c in claims:
        if granted[c.key] < c.desired:
            short = c.desired - granted[c.key]
            if c.gpu_type in left_type and left_type[c.gpu_type] < c.gpus_per_replica:
                why = f"the global {c.gpu_type or 'GPU'} budget ({budget[c.gpu_type]}) is spent"
            else:
                why = f"region {c.region} has no free GPU"
            limited[c.key] = f"{short} replica(s) short: {why}; traffic spills to other regions"
    return Allocation(granted, limited)
