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

from dataclasses import dataclass

import numpy as np

from router.latency import FITTED, LatencyModel
from router.policies.base import INF, FleetTable, FloatArray, IntArray, RoutingPolicy
from router.policies.stats import RouterStats

__all__ = ["MeridianPolicy", "QueueShape", "expected_wait_ms"]

RHO_CAP = 0.995  # the M/M/c term is evaluated at most here; beyond it the backlog term rules


@dataclass(frozen=True, slots=True)
class QueueShape:
    """Per-region constants of the c-server queue model (built once per snapshot)."""

    capacity_rps: FloatArray
    service_ms: FloatArray
    servers: FloatArray  # c = capacity x mean service time
    exponent: FloatArray  # Sakasegawa: sqrt(2(c + 1)) - 1
    ms_per_request: FloatArray  # 1000 / capacity: drain time of one queued request

    @classmethod
    def of(cls, capacity_rps: FloatArray, service_ms: FloatArray) -> QueueShape:
        cap = np.maximum(capacity_rps, 1e-9)
        servers = np.maximum(cap * service_ms / 1000.0, 1.0)
        return cls(cap, service_ms, servers, np.sqrt(2.0 * (servers + 1.0)) - 1.0, 1000.0 / cap)

    def wait_ms(self, load: FloatArray, offered_rps: FloatArray | None = None) -> FloatArray:
        util = load / self.servers if offered_rps is None else offered_rps / self.capacity_rps
        rho = np.minimum(util, RHO_CAP)
        mmc = self.service_ms * rho**self.exponent / (self.servers * (1.0 - rho))
        backlog = np.maximum(load - self.servers + 1.0, 0.0) * self.ms_per_request
        out: FloatArray = mmc + backlog
        return out


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
    return QueueShape.of(capacity_rps, service_ms).wait_ms(load, offered_rps)


class MeridianPolicy(RoutingPolicy):
    """Least expected completion time with queue-aware capacity spillover."""

    name = "meridian"
    cost_is_time = True  # RTT + expected wait + service: an expected completion time

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
        idx = stats.slots(table.names)
        shape = table.memo.get(self)
        if not isinstance(shape, QueueShape):
            service = np.full(len(table.names), self.default_service_ms)
            shape = QueueShape.of(table.capacity_rps, service)
            table.memo[self] = shape
        rates = stats.rates(idx, now)
        load = np.maximum(table.reported_load, stats.in_region(idx, now, rates))
        if extra_load is not None:
            load = load + extra_load
        wait = shape.wait_ms(load, rates if self.rate_utilization else None)
        return np.maximum(wait, stats.waits(idx, now)), shape.service_ms

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
