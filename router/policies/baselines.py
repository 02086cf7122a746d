"""Baseline routing policies, same interface as Meridian's, for comparison.

- ``NearestPolicy``: latency-based DNS: the lowest-RTT healthy region, load-blind.
- ``WaterfallPolicy``: the cloud load balancers' "waterfall by region": fill the
  nearest region up to its capacity (requests/s against ``capacity_rps``), then
  spill to the next nearest.
- ``RoundRobinPolicy``: every healthy region in turn.
- ``OraclePolicy``: least actual completion time from perfect knowledge of every
  region's queue (only a simulator has that); the bound the others are held to.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from router.latency import FITTED, LatencyModel
from router.policies.base import FleetTable, FloatArray, RoutingPolicy
from router.policies.stats import RouterStats

__all__ = ["NearestPolicy", "OraclePolicy", "RoundRobinPolicy", "WaterfallPolicy"]

_FULL = 1e6  # added to a full region's cost: it stays a candidate, behind every non-full one


class NearestPolicy(RoutingPolicy):
    name = "nearest"
    cost_is_time = True  # the RTT: a lower bound of the completion time


class WaterfallPolicy(RoutingPolicy):
    """Nearest region below ``fill`` x capacity (dispatch rate over the last second)."""

    name = "waterfall"

    def __init__(self, latency: LatencyModel = FITTED, fill: float = 1.0) -> None:
        super().__init__(latency)
        self.fill = fill

    def region_base(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        rate = stats.rates(stats.slots(table.names), now)
        out: FloatArray = np.where(rate >= self.fill * table.capacity_rps, _FULL, 0.0)
        return out


class RoundRobinPolicy(RoutingPolicy):
    """Rotates over the candidate regions; one cursor per policy object."""

    name = "round-robin"
    rtt_additive = False

    def __init__(self, latency: LatencyModel = FITTED) -> None:
        super().__init__(latency)
        self.cursor = 0

    def region_costs(
        self, table: FleetTable, stats: RouterStats, rtt_ms: FloatArray, now: float
    ) -> FloatArray:
        n = len(table.names)
        rows = 1 if rtt_ms.ndim == 1 else rtt_ms.shape[0]
        start = self.cursor + np.arange(rows)[:, None]
        self.cursor = (self.cursor + rows) % max(n, 1)
        costs = ((np.arange(n)[None, :] - start) % max(n, 1)).astype(np.float64)
        return costs[0] if rtt_ms.ndim == 1 else costs


class OraclePolicy(RoutingPolicy):
    """Least actual completion time. ``truth()`` gives, per region of the table, the time
    (ms, same clock as ``now``) its earliest server frees up, ``inf`` where it is down."""

    name = "oracle"
    sequential = True
    rtt_additive = False

    def __init__(
        self,
        truth: Callable[[], FloatArray],
        latency: LatencyModel = FITTED,
        service: Callable[[], FloatArray] | None = None,
    ) -> None:
        super().__init__(latency)
        self.truth = truth
        self.service = service

    def region_costs(
        self, table: FleetTable, stats: RouterStats, rtt_ms: FloatArray, now: float
    ) -> FloatArray:
        free_at = self.truth()
        arrive = now * 1000.0 + rtt_ms / 2.0
        out: FloatArray = rtt_ms + np.maximum(free_at - arrive, 0.0)
        if self.service is not None:
            out = out + self.service()
        return out

    def candidates(self, table: FleetTable, stats: RouterStats, now: float) -> np.ndarray:
        out: np.ndarray = table.routable & np.isfinite(self.truth())
        return out
