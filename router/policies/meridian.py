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

from meridian.snapshot import RoutingSnapshot
from router.latency import FITTED, LatencyModel
from router.policies.base import INF, FleetTable, FloatArray, IntArray, RouteRequest, RoutingPolicy
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
    """Least expected completion time with queue-aware capacity spillover.

    Robust to stale snapshots shared by many routers (``herd_safe``, on by default):
    a region's load is the snapshot's plus what this router sent there since, scaled
    by the fleet's load per request of its own (``RouterStats.replica_scale``: about
    the number of routers); its offered rate is this router's, scaled the same; its
    concurrency is what the region was seen to sustain (``RouterStats.learned_servers``),
    not what it reports. ``spread_ms`` > 0: each request goes to a region drawn among
    those whose cost is within ``spread_ms`` of the best, weighted by headroom (free
    servers, plus one), so routers acting on the same view do not all pick one region.
    """

    name = "meridian"
    cost_is_time = True  # RTT + expected wait + service: an expected completion time

    def __init__(
        self,
        latency: LatencyModel = FITTED,
        default_service_ms: float = 50.0,
        refresh_s: float = 0.0,
        rate_utilization: bool = True,
        herd_safe: bool = True,
        spread_ms: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(latency, refresh_s)
        self.rate_utilization = rate_utilization
        self.default_service_ms = default_service_ms
        self.herd_safe = herd_safe
        self.spread_ms = spread_ms
        self.rng = np.random.default_rng(seed)

    def _reported_shape(self, table: FleetTable) -> QueueShape:
        shape = table.memo.get(self)
        if not isinstance(shape, QueueShape):
            service = np.full(len(table.names), self.default_service_ms)
            shape = QueueShape.of(table.capacity_rps, service)
            table.memo[self] = shape
        return shape

    def queue_state(
        self, table: FleetTable, stats: RouterStats, now: float
    ) -> tuple[QueueShape, FloatArray, FloatArray]:
        """(queue shape, estimated requests in each region, estimated offered rate per
        region) as this router sees them now."""
        idx = stats.slots(table.names)
        reported = self._reported_shape(table)
        own_rates = stats.rates(idx, now)
        if not self.herd_safe:
            load = np.maximum(table.reported_load, stats.in_region(idx, now, own_rates))
            return reported, load, own_rates
        if len(table.in_flight) == len(table.names):
            # one observation per snapshot, whichever model's table comes first
            token = self._snapshot if self._snapshot is not None else table
            stats.observe_snapshot(
                token,
                idx,
                table.reported_load,
                reported.servers,
                table.in_flight,
                table.queue_depth,
                now,
                routers=self._snapshot.routers if self._snapshot is not None else 0,
            )
        shape = reported
        if stats.learned_version:
            key = (self, "learned")
            cached = table.memo.get(key)
            if (
                isinstance(cached, tuple)
                and cached[0] is stats
                and cached[1] == stats.learned_version
            ):
                shape = cached[2]
            else:
                servers = stats.effective_servers(idx, reported.servers)
                shape = QueueShape.of(servers * 1000.0 / reported.service_ms, reported.service_ms)
                table.memo[key] = (stats, stats.learned_version, shape)
        k = stats.replica_scale
        fresh = np.maximum(table.reported_load + k * stats.since_snapshot(idx), 0.0)
        load = np.maximum(fresh, k * stats.in_region(idx, now, own_rates))
        return shape, load, own_rates * k

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
        shape, load, rates = self.queue_state(table, stats, now)
        if extra_load is not None:
            load = load + extra_load
        wait = shape.wait_ms(load, rates if self.rate_utilization else None)
        idx = stats.slots(table.names)
        return np.maximum(wait, stats.waits(idx, now)), shape.service_ms

    def region_base(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        wait, service = self.region_terms(table, stats, now)
        out: FloatArray = wait + service
        return out

    def _load_view(
        self, table: FleetTable, stats: RouterStats, now: float
    ) -> tuple[FloatArray, float, float]:
        """(headroom per region, fleet load, fleet servers), reused like the cost's
        per-region part (per stats state, or per ``refresh_s`` of router time)."""
        if self.refresh_s > 0:
            key: tuple[object, ...] = (stats, stats.error_version, int(now / self.refresh_s))
        else:
            key = (stats, stats.version, now)
        memo = table.memo.get((self, "load"))
        if isinstance(memo, tuple) and memo[0] == key:
            return memo[1], memo[2], memo[3]
        shape, load, _ = self.queue_state(table, stats, now)
        ok = self.candidates(table, stats, now)
        room: FloatArray = np.maximum(shape.servers - load, 0.0) + 1.0
        view = (room, float(load[ok].sum()), float(shape.servers[ok].sum()))
        table.memo[(self, "load")] = (key, *view)
        return view

    def headroom(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        """Free servers per region as this router estimates them, plus one."""
        return self._load_view(table, stats, now)[0]

    def fleet_load(self, table: FleetTable, stats: RouterStats, now: float) -> tuple[float, float]:
        """(estimated requests in, servers of) the candidate regions, summed."""
        _, load, servers = self._load_view(table, stats, now)
        return load, servers

    def rank(
        self, snapshot: RoutingSnapshot, stats: RouterStats, request: RouteRequest, now: float
    ) -> list[str]:
        ranked = super().rank(snapshot, stats, request, now)
        if self.spread_ms <= 0 or len(ranked) < 2:
            return ranked
        table = self.table(snapshot, request.model)
        costs = table.rtt_row(request) + self._cached_base(table, stats, now)
        best = costs[table.index[ranked[0]]]
        near = np.flatnonzero(np.isfinite(costs) & (costs <= best + self.spread_ms))
        for name in request.exclude:
            near = near[near != table.index.get(name, -1)]
        if len(near) < 2:
            return ranked
        cum = np.cumsum(self.headroom(table, stats, now)[near])
        k = min(int(np.searchsorted(cum, self.rng.random() * cum[-1], "right")), len(near) - 1)
        name = table.names[int(near[k])]
        if name == ranked[0]:
            return ranked
        return [name] + [n for n in ranked if n != name]

    def choose_batch(
        self,
        table: FleetTable,
        stats: RouterStats,
        rtt_ms: FloatArray,
        now: float,
        exclude: IntArray | None = None,
    ) -> IntArray:
        """As one-by-one decisions would: a second pass charges each region half the
        requests the first pass gave it (times the fleet's load per own request, for
        the other routers deciding meanwhile), so a batch does not stampede one region."""
        allowed = np.where(self.candidates(table, stats, now), 0.0, INF)
        wait, service = self.region_terms(table, stats, now)
        first = self._choose(rtt_ms, wait + service + allowed, exclude)
        added = np.bincount(first[first >= 0], minlength=len(table.names)).astype(np.float64)
        scale = stats.replica_scale if self.herd_safe else 1.0
        wait2, _ = self.region_terms(table, stats, now, extra_load=added * 0.5 * scale)
        if self.spread_ms <= 0:
            if np.all(wait2 - wait < 0.5):  # the batch moves no region's wait: keep the choice
                return first
            return self._choose(rtt_ms, wait2 + service + allowed, exclude)
        costs = rtt_ms + (wait2 + service + allowed)
        if exclude is not None:
            rows = np.flatnonzero(exclude >= 0)
            costs[rows, exclude[rows]] = INF
        return self._spread(costs, self.headroom(table, stats, now))

    def _spread(self, costs: FloatArray, headroom: FloatArray) -> IntArray:
        """Per row, a region drawn among those within ``spread_ms`` of the row's best,
        with probability in proportion to ``headroom``; -1 where none is finite."""
        best = costs.min(axis=1, keepdims=True)
        near = np.isfinite(costs) & (costs <= best + self.spread_ms)
        cum = np.cumsum(np.where(near, headroom[None, :], 0.0), axis=1)
        u = self.rng.random(len(costs)) * cum[:, -1]
        choice: IntArray = np.minimum((cum <= u[:, None]).sum(axis=1), costs.shape[1] - 1)
        choice = choice.astype(np.int64)
        choice[~np.isfinite(best[:, 0])] = -1
        return choice
