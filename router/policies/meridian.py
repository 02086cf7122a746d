"""Meridian's routing policy: least expected completion time.

    cost(R) = rtt(C, R) + expected_queue_wait(R) + service_time(R)

The queue wait treats a region as a c-server queue: c = capacity_rps x mean
service time (replicas x throughput expressed as concurrent servers), loaded with
n = max(reported queue depth + in-flight, this router's outstanding requests less
those still on the wire).
A request finding all servers busy waits for ``n - c + 1`` completions at the
region's service rate; on top, the M/M/c mean wait at utilisation n/c
(Sakasegawa's approximation of Erlang C) charges a nearly saturated region
before it saturates, so traffic spills to the next-best region early instead
of piling up. The router's EWMA of observed waits corrects the model when the
region is slower than its reports say.
"""

from __future__ import annotations

import numpy as np

from router.latency import FITTED, LatencyModel
from router.policies.base import INF, FleetTable, FloatArray, IntArray, RoutingPolicy
from router.policies.stats import RouterStats

__all__ = ["MeridianPolicy", "expected_wait_ms"]

RHO_CAP = 0.995  # the M/M/c term is evaluated at most here; beyond it the backlog term rules


def expected_wait_ms(
    load: FloatArray,
    capacity_rps: FloatArray,
    service_ms: FloatArray,
    offered_rps: FloatArray | None = None,
) -> FloatArray:
    """Mean queueing delay (ms) of a request joining a region with ``load`` requests in it.

    The M/M/c term is taken at utilisation ``offered_rps / capacity_rps`` when the
    offered rate is known, else at the occupancy ``load / servers``.
    """
    cap = np.maximum(capacity_rps, 1e-9)
    servers = np.maximum(cap * service_ms / 1000.0, 1.0)
    util = load / servers if offered_rps is None else offered_rps / cap
    rho = np.minimum(util, RHO_CAP)
    exponent = np.sqrt(2.0 * (servers + 1.0)) - 1.0
    mmc = service_ms * rho**exponent / (servers * (1.0 - rho))
    backlog = np.maximum(load - servers + 1.0, 0.0) * 1000.0 / cap
    out: FloatArray = mmc + backlog
    return out


class MeridianPolicy(RoutingPolicy):
    """Least expected completion time with queue-aware capacity spillover."""

    name = "meridian"

    def __init__(
        self,
        latency: LatencyModel = FITTED,
        default_service_ms: float = 50.0,
        refresh_s: float = 0.0,
        rate_utilization: bool = True,
    ) -> None:
        super().__init__(latency, refresh_s)
        self.rate_utilization = rate_utilization
        self.default_service_ms = default_service_ms

    def region_terms(
        self,
        table: FleetTable,
        stats: RouterStats,
        now: float,
        extra_load: FloatArray | None = None,
    ) -> tuple[FloatArray, FloatArray]:
        """(expected wait, expected service time) per region, in ms.

        The service time is the model's expected one: regions differ in how many
        requests they serve at once (capacity), not in how long one takes; the
        per-region EWMA of service times mostly measures which requests happened
        to land there, and ranking on it would chase noise.
        """
        idx = stats.indices(table.names)
        service = np.full(len(table.names), self.default_service_ms)
        load = np.maximum(table.reported_load, stats.in_region(idx, now))
        if extra_load is not None:
            load = load + extra_load
        offered = stats.rates(idx, now) if self.rate_utilization else None
        wait = expected_wait_ms(load, table.capacity_rps, service, offered)
        return np.maximum(wait, stats.waits(idx, now)), service

    def region_base(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        wait, service = self.region_terms(table, stats, now)
        out: FloatArray = wait + service
        return out

    def choose_batch(
        self,
        table: FleetTable,
        stats: RouterStats,
        rtt_ms: FloatArray,
        now: float,
        exclude: IntArray | None = None,
    ) -> IntArray:
        """As one-by-one decisions would: a second pass charges each region half the
        requests the first pass gave it, so a batch does not stampede one region."""
        allowed = np.where(self.candidates(table, stats, now), 0.0, INF)
        wait, service = self.region_terms(table, stats, now)
        first = self._choose(rtt_ms, wait + service + allowed, exclude)
        added = np.bincount(first[first >= 0], minlength=len(table.names)).astype(np.float64)
        wait2, _ = self.region_terms(table, stats, now, extra_load=added * 0.5)
        if np.all(wait2 - wait < 0.5):  # the batch moves no region's wait: keep the choice
            return first
        return self._choose(rtt_ms, wait2 + service + allowed, exclude)
