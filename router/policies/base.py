"""The routing-policy interface and the per-snapshot tables every policy reads.

A policy is a strategy object. ``rank(snapshot, stats, request, now)`` returns
candidate regions best first (the router tries them in order, for failover);
``choose_batch(table, stats, rtt_ms, now)`` makes the same decision for many
requests at once (the fleet simulator). Both call the policy's one cost
function, ``region_costs``, so a replayed decision is the router's decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meridian.snapshot import RoutingSnapshot
from router.latency import FITTED, LatencyModel, great_circle_km_array
from router.policies.stats import RouterStats

__all__ = ["FleetTable", "RouteRequest", "RoutingPolicy"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

INF = float("inf")
_BUCKET_DEG = 0.25  # client locations within about 25 km share one cached RTT row
_RTT_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What the router knows about one request when it chooses a region."""

    model: str
    lat: float = 0.0
    lon: float = 0.0
    measured_rtt_ms: Mapping[str, float] | None = None  # region -> RTT measured for this client
    exclude: tuple[str, ...] = ()  # regions already tried (retries)


@dataclass(slots=True)
class FleetTable:
    """One snapshot's regions for one model, as arrays (built once per snapshot)."""

    names: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    capacity_rps: FloatArray
    reported_load: FloatArray  # queue_depth + in_flight from the region's last report
    routable: BoolArray  # region healthy/degraded and serving the model
    latency: LatencyModel
    in_flight: FloatArray = field(default_factory=lambda: np.zeros(0))  # as reported
    queue_depth: FloatArray = field(default_factory=lambda: np.zeros(0))  # as reported
    index: dict[str, int] = field(default_factory=dict)
    _rtt_rows: dict[tuple[int, int], FloatArray] = field(default_factory=dict)
    # the policy's per-region cost (everything but RTT) for one stats state, reused per request
    base_key: tuple[object, ...] = ()
    base_costs: FloatArray | None = None
    memo: dict[object, object] = field(default_factory=dict)  # policies' per-snapshot constants

    @classmethod
    def build(
        cls, snapshot: RoutingSnapshot, model: str, latency: LatencyModel = FITTED
    ) -> FleetTable:
        regions = snapshot.regions
        return cls(
            names=tuple(r.name for r in regions),
            lat=np.array([r.lat for r in regions], dtype=np.float64),
            lon=np.array([r.lon for r in regions], dtype=np.float64),
            capacity_rps=np.array([r.capacity_rps for r in regions], dtype=np.float64),
            reported_load=np.array([r.queue_depth + r.in_flight for r in regions], dtype=float),
            routable=np.array(
                [r.state.routable and r.capacity_rps > 0 and r.serves(model) for r in regions],
                dtype=bool,
            ),
            latency=latency,
            in_flight=np.array([r.in_flight for r in regions], dtype=np.float64),
            queue_depth=np.array([r.queue_depth for r in regions], dtype=np.float64),
            index={r.name: i for i, r in enumerate(regions)},
        )

    def rtt_matrix(self, lat: FloatArray, lon: FloatArray) -> FloatArray:
        """Modelled RTT (ms) from each client location (rows) to each region (columns)."""
        km = great_circle_km_array(lat[:, None], lon[:, None], self.lat[None, :], self.lon[None, :])
        return self.latency.rtt_ms_array(km)

    def rtt_row(self, request: RouteRequest) -> FloatArray:
        """RTT from the request's client to every region; measured values override the model."""
        key = (int(request.lat / _BUCKET_DEG), int(request.lon / _BUCKET_DEG))
        row = self._rtt_rows.get(key)
        if row is None:
            if len(self._rtt_rows) >= _RTT_CACHE_MAX:
                self._rtt_rows.clear()
            row = self.rtt_matrix(np.array([request.lat]), np.array([request.lon]))[0]
            self._rtt_rows[key] = row
        if request.measured_rtt_ms:
            row = row.copy()
            for name, ms in request.measured_rtt_ms.items():
                i = self.index.get(name)
                if i is not None:
                    row[i] = ms
        return row


class RoutingPolicy:
    """Base class: subclasses give their costs; ranking, masking and batching live here.

    Most policies cost a region as ``rtt + region_base(...)`` (``rtt_additive``): then
    ``rank`` computes the per-region part once per stats state and adds each request's
    RTT row to it. ``refresh_s`` > 0 lets that part be reused for up to ``refresh_s``
    of router time while the stats move (errors always force a recompute); 0 recomputes
    whenever the stats change.
    """

    name = "policy"
    sequential = False  # True: the simulator must decide request by request (exact state)
    rtt_additive = True
    # True: a region's cost is its expected completion time in ms (admission may compare
    # it with a request's deadline); False: a ranking score only (penalties, cursors)
    cost_is_time = False

    def __init__(self, latency: LatencyModel = FITTED, refresh_s: float = 0.0) -> None:
        self.latency = latency
        self.refresh_s = refresh_s
        self._snapshot: RoutingSnapshot | None = None
        self._tables: dict[str, FleetTable] = {}

    # --- the one cost function --------------------------------------------------------------

    def region_base(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        """The per-region part of the cost (ms), independent of the client."""
        return np.zeros(len(table.names))

    def region_costs(
        self, table: FleetTable, stats: RouterStats, rtt_ms: FloatArray, now: float
    ) -> FloatArray:
        """Cost (lower is better) of each region, same shape as ``rtt_ms`` ((R,) or (m, R))."""
        out: FloatArray = rtt_ms + self.region_base(table, stats, now)
        return out

    # --- shared machinery -------------------------------------------------------------------

    def table(self, snapshot: RoutingSnapshot, model: str) -> FleetTable:
        """The arrays for ``snapshot`` and ``model``, built once per snapshot."""
        if snapshot is not self._snapshot:
            self._snapshot = snapshot
            self._tables = {}
        table = self._tables.get(model)
        if table is None:
            table = FleetTable.build(snapshot, model, self.latency)
            self._tables[model] = table
        return table

    def candidates(self, table: FleetTable, stats: RouterStats, now: float) -> BoolArray:
        """Regions a request may go to: routable and circuit closed."""
        out: BoolArray = table.routable & ~stats.circuit_open(stats.slots(table.names), now)
        return out

    def rank(
        self, snapshot: RoutingSnapshot, stats: RouterStats, request: RouteRequest, now: float
    ) -> list[str]:
        """Candidate regions for ``request``, best first; empty when none can serve it."""
        table = self.table(snapshot, request.model)
        if self.rtt_additive:
            costs = table.rtt_row(request) + self._cached_base(table, stats, now)
        else:
            costs = self.region_costs(table, stats, table.rtt_row(request), now)
            costs = np.where(self.candidates(table, stats, now), costs, INF)
        for name in request.exclude:
            i = table.index.get(name)
            if i is not None:
                costs[i] = INF
        order = np.argsort(costs, kind="stable").tolist()
        finite = int(np.isfinite(costs).sum())
        names = table.names
        return [names[i] for i in order[:finite]]

    def expected_ms(
        self,
        snapshot: RoutingSnapshot,
        stats: RouterStats,
        request: RouteRequest,
        region: str,
        now: float,
    ) -> float | None:
        """``region``'s cost for ``request`` as an expected completion time in ms, or None
        when this policy's costs are not times. Right after :meth:`rank` it reuses the
        ranking's cached parts: a dict lookup and two array reads."""
        if not self.cost_is_time:
            return None
        table = self.table(snapshot, request.model)
        i = table.index.get(region)
        if i is None:
            return None
        rtt = table.rtt_row(request)
        if self.rtt_additive:
            return float(rtt[i] + self._cached_base(table, stats, now)[i])
        return float(self.region_costs(table, stats, rtt, now)[i])

    def best_expected_batch(
        self, table: FleetTable, stats: RouterStats, rtt_ms: FloatArray, now: float
    ) -> FloatArray | None:
        """Per row of ``rtt_ms`` (m, R), the best candidate region's expected completion
        time in ms (``inf`` where none), or None when this policy's costs are not times."""
        if not self.cost_is_time:
            return None
        allowed = self.candidates(table, stats, now)
        if self.rtt_additive:
            costs = rtt_ms + np.where(allowed, self.region_base(table, stats, now), INF)
        else:
            costs = np.where(allowed, self.region_costs(table, stats, rtt_ms, now), INF)
        out: FloatArray = costs.min(axis=1) if costs.shape[1] else np.full(len(costs), INF)
        return out

    def fleet_load(self, table: FleetTable, stats: RouterStats, now: float) -> tuple[float, float]:
        """(estimated requests in, servers of) the candidate regions; (0, 0) when the
        policy does not model queues."""
        return 0.0, 0.0

    def _cached_base(self, table: FleetTable, stats: RouterStats, now: float) -> FloatArray:
        if self.refresh_s > 0:
            key: tuple[object, ...] = (stats, stats.error_version, int(now / self.refresh_s))
        else:
            key = (stats, stats.version, now)
        if table.base_key != key or table.base_costs is None:
            base = self.region_base(table, stats, now)
            table.base_costs = np.where(self.candidates(table, stats, now), base, INF)
            table.base_key = key
        return table.base_costs

    def choose_batch(
        self,
        table: FleetTable,
        stats: RouterStats,
        rtt_ms: FloatArray,
        now: float,
        exclude: IntArray | None = None,
    ) -> IntArray:
        """Best region index per row of ``rtt_ms`` (m, R); -1 where no region can serve.

        ``exclude[i]`` (or -1) is a region request ``i`` must avoid (its failed attempt).
        """
        allowed = self.candidates(table, stats, now)
        if self.rtt_additive:
            base = np.where(allowed, self.region_base(table, stats, now), INF)
            return self._choose(rtt_ms, base, exclude)
        costs = self.region_costs(table, stats, rtt_ms, now)
        return self._choose(costs, np.where(allowed, 0.0, INF), exclude)

    @staticmethod
    def _choose(rtt_ms: FloatArray, base: FloatArray, exclude: IntArray | None) -> IntArray:
        """argmin over regions of ``rtt_ms + base`` per row (``base`` is INF where barred)."""
        costs = rtt_ms + base
        check = not np.isfinite(base).all()
        if exclude is not None:
            rows = np.flatnonzero(exclude >= 0)
            if len(rows):
                costs[rows, exclude[rows]] = INF
                check = True
        choice: IntArray = np.argmin(costs, axis=1).astype(np.int64)
        if check:
            none = ~np.isfinite(costs[np.arange(len(choice)), choice])
            choice[none] = -1
        return choice
