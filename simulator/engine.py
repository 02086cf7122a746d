"""The discrete-event fleet simulation, slice by slice.

Every region is a first-come-first-served queue in front of its GPUs (one heap of
server-free times). Every ``dt`` of simulated time: new arrivals plus due retries
are routed by the policy object (``choose_batch``, or request by request for
policies that need exact state), placed on the chosen regions' queues, and their
outcomes are written into rings keyed by the time the router will see them; as
simulated time passes those observations feed the router's ``RouterStats``.
The health plane publishes a routing snapshot every ``snapshot_interval_s`` and
at once when it detects a region failure, ``detection_s`` after it happened.

``routers`` > 1 runs that many router replicas: every request goes to one at random,
each has its own policy object and ``RouterStats`` fed only its own requests'
outcomes, and all of them act on the same (stale) snapshot. A region whose
``FleetSpec.report_factor`` is not 1 reports that multiple of its real GPUs and
capacity. With ``admission`` set, a router refuses a new request at once (answered
at arrival, never placed) when the router's ``Admission`` says so; every request carries a
deadline (``deadline_ms``) and a class drawn from ``class_shares`` (0 = highest).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.admission import ADMITTED, Admission
from router.latency import FITTED, LatencyModel
from router.policies import FleetTable, RouterStats, RoutingPolicy, StatsConfig
from simulator.metrics import PolicyResult
from simulator.workload import Workload

__all__ = ["FleetEvent", "FleetSpec", "SimConfig", "Simulation"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
INF = math.inf


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """``fail``: the region stops answering in [at_s, until_s). ``capacity``: set ``gpus``."""

    kind: str
    region: str
    at_s: float
    until_s: float = INF
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class FleetSpec:
    names: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    gpus: IntArray
    events: tuple[FleetEvent, ...] = ()
    report_factor: FloatArray | None = None  # reported GPUs and capacity / real ones


@dataclass(frozen=True, slots=True)
class SimConfig:
    duration_s: float = 30.0
    dt_ms: float = 10.0
    snapshot_interval_s: float = 1.0  # agents report about every second
    detection_s: float = 1.0  # failure -> region marked down in the snapshot
    max_attempts: int = 3  # first try + retries in the next-best region
    slo_overhead_ms: float = 200.0  # SLO: network + queueing + retries within this
    model: str = "llm"
    ring_ms: float = 10.0
    horizon_s: float = 200.0
    stats: StatsConfig = field(default_factory=StatsConfig)
    latency: LatencyModel = FITTED
    routers: int = 1  # router replicas, each with its own stats, on the same snapshots
    deadline_ms: float = 1000.0  # every request's end-to-end deadline (goodput counts these)
    class_shares: tuple[float, ...] = (1.0,)  # share of requests per class, 0 = highest
    admission: Admission | None = None  # the router's; None: every request is routed
    seed: int = 7  # router assignment and classes


class Simulation:
    """One policy over one fleet and one workload."""

    def __init__(
        self,
        policy: RoutingPolicy | Sequence[RoutingPolicy],
        fleet: FleetSpec,
        workload: Workload,
        config: SimConfig,
    ) -> None:
        """``policy``: one object per router replica (a single one for one router)."""
        policies = [policy] if isinstance(policy, RoutingPolicy) else list(policy)
        if not policies:
            raise ValueError("at least one router's policy is needed")
        if len(policies) > 1 and any(p.sequential for p in policies):
            raise ValueError("a sequential policy (the oracle) runs as one router only")
        self.policies = policies
        self.policy = policies[0]
        self.R = len(policies)
        self.fleet = fleet
        self.workload = workload
        self.cfg = config
        n = len(fleet.names)
        self.n = n
        self.servers = fleet.gpus.astype(np.int64).copy()
        self.heaps: list[list[float]] = [[0.0] * int(s) for s in self.servers]
        self.fail_at = np.full(n, INF)
        self.recover_at = np.full(n, INF)
        self._capacity_events: list[FleetEvent] = []
        for ev in fleet.events:
            i = fleet.names.index(ev.region)
            if ev.kind == "fail":
                self.fail_at[i] = ev.at_s * 1000.0
                self.recover_at[i] = ev.until_s * 1000.0
            elif ev.kind == "capacity":
                self._capacity_events.append(ev)
            else:
                raise ValueError(f"unknown fleet event kind {ev.kind!r}")
        self._capacity_events.sort(key=lambda e: e.at_s)
        self._recovered = np.zeros(n, dtype=bool)
        self.mean_service_ms = workload.mean_service_ms
        self.router_stats = [RouterStats(config.stats) for _ in policies]
        self.stats = self.router_stats[0]
        self.sidx = self.stats.indices(fleet.names)
        for st in self.router_stats[1:]:
            st.indices(fleet.names)
        self.report_factor = (
            np.ones(n) if fleet.report_factor is None else np.asarray(fleet.report_factor)
        )
        self.rng = np.random.default_rng(config.seed)
        shares = np.asarray(config.class_shares, dtype=np.float64)
        self.class_cum = np.cumsum(shares / shares.sum())
        self.all_idx = np.arange(n)
        # observation rings: what the router learns at a given time
        self.L = int(config.horizon_s * 1000.0 / config.ring_ms)
        # per router: what each learns from its own requests
        self.ring_ok = np.zeros((self.L, self.R, n))
        self.ring_fail = np.zeros((self.L, self.R, n))
        self.ring_wait = np.zeros((self.L, self.R, n))
        self.ring_svc = np.zeros((self.L, self.R, n))
        self.ring_done = np.zeros((self.L, n))  # region-side completions (queue accounting)
        self.next_slot = 0
        self.admitted = np.zeros(n)
        self.completed = np.zeros(n)
        # retries waiting for their time: columns t, client, svc, origin, attempt, exclude,
        # router, class
        self.pending = np.zeros((0, 8))
        self.free0 = np.zeros(n)  # earliest server-free time per region (the oracle's truth)
        # called at the start of every slice (e.g. an autoscaler changing ``servers``)
        self.on_slice: Callable[[Simulation, float], None] | None = None
        self.snapshot: RoutingSnapshot | None = None
        self.snapshot_version = 0
        self.next_snapshot_ms = 0.0
        self.health_marks = sorted(
            {float(x) for x in self.fail_at + config.detection_s * 1000.0 if math.isfinite(x)}
            | {float(x) for x in self.recover_at + config.detection_s * 1000.0 if math.isfinite(x)}
        )
        # client city -> region RTT (ms) from the fitted latency model, as the router computes it
        probe = FleetTable.build(self._snapshot(0.0, 0), config.model, config.latency)
        self.rtt_city = probe.rtt_matrix(workload.places.lat, workload.places.lon)
        seconds = math.ceil(config.duration_s) + 1
        self.result = PolicyResult(
            policy=self.policy.name,
            regions=fleet.names,
            served=np.zeros(n),
            busy_ms=np.zeros(n),
            server_ms=np.zeros(n),
            flows=np.zeros((len(workload.places.names), n)),
            timeline=np.zeros((seconds, n)),
            deadline_ms=config.deadline_ms,
            duration_s=config.duration_s,
            fleet_capacity_rps=float(fleet.gpus.sum()) * 1000.0 / workload.mean_service_ms,
            refused_by_class=np.zeros(len(config.class_shares)),
        )

    # --- health plane ---------------------------------------------------------------------

    def region_state(self, i: int, t_ms: float) -> HealthState:
        det = self.cfg.detection_s * 1000.0
        if self.fail_at[i] + det <= t_ms < self.recover_at[i] + det:
            return HealthState.DOWN
        return HealthState.HEALTHY

    def _snapshot(self, t_ms: float, version: int) -> RoutingSnapshot:
        f = self.fleet
        regions = []
        for i, name in enumerate(f.names):
            servers = int(self.servers[i])
            reported = max(round(servers * float(self.report_factor[i])), 1)
            busy = sum(1 for x in self.heaps[i] if x > t_ms)
            in_system = int(self.admitted[i] - self.completed[i])
            state = self.region_state(i, t_ms)
            mean_svc = self.mean_service_ms
            worker = WorkerView(f"{name}-pool", "", HealthState.HEALTHY, (self.cfg.model + ":1",))
            regions.append(
                RegionView(
                    name=name,
                    state=state,
                    lat=float(f.lat[i]),
                    lon=float(f.lon[i]),
                    gpu_count=reported,
                    healthy_gpus=reported,
                    capacity_rps=reported * 1000.0 / mean_svc,
                    in_flight=busy,
                    queue_depth=max(0, in_system - busy),
                    workers=(worker,),
                )
            )
        # the control plane counts the routers that report to it
        return RoutingSnapshot(
            version=version, generated_at=t_ms / 1000.0, regions=tuple(regions), routers=self.R
        )

    def _maybe_publish(self, t_ms: float) -> None:
        due = t_ms >= self.next_snapshot_ms
        while self.health_marks and self.health_marks[0] <= t_ms:
            self.health_marks.pop(0)
            due = True
        if due:
            self.snapshot_version += 1
            self.snapshot = self._snapshot(t_ms, self.snapshot_version)
            self.next_snapshot_ms = t_ms + self.cfg.snapshot_interval_s * 1000.0

    # --- fleet events ---------------------------------------------------------------------

    def _apply_events(self, t_ms: float) -> None:
        while self._capacity_events and self._capacity_events[0].at_s * 1000.0 <= t_ms:
            ev = self._capacity_events.pop(0)
            i = self.fleet.names.index(ev.region)
            h = self.heaps[i]
            if ev.gpus > len(h):
                h.extend([t_ms] * (ev.gpus - len(h)))
            else:
                h[:] = heapq.nsmallest(max(ev.gpus, 1), h)
            heapq.heapify(h)
            self.servers[i] = len(h)
        recovering = (self.recover_at <= t_ms) & ~self._recovered
        for j in np.flatnonzero(recovering).tolist():
            self.heaps[j] = [t_ms] * int(self.servers[j])  # back empty
            self.admitted[j] = self.completed[j] = 0.0
            self._recovered[j] = True
        for i in range(self.n):
            h0 = self.heaps[i][0]
            down = self.fail_at[i] <= t_ms < self.recover_at[i]
            self.free0[i] = INF if down else h0

    # --- one run --------------------------------------------------------------------------

    def run(self) -> PolicyResult:
        cfg = self.cfg
        res = self.result
        wall0 = time.perf_counter()
        n_slices = math.ceil(cfg.duration_s * 1000.0 / cfg.dt_ms)
        for k in range(n_slices):
            t0 = k * cfg.dt_ms
            self._apply_events(t0)
            if self.on_slice is not None:
                self.on_slice(self, t0)
            self._maybe_publish(t0)
            res.server_ms += self.servers * cfg.dt_ms
            sl = self.workload.slice(t0, cfg.dt_ms)
            m_new = len(sl.t_ms)
            res.requests += m_new
            batch = np.empty((m_new, 8))
            batch[:, 0] = sl.t_ms
            batch[:, 1] = sl.client
            batch[:, 2] = sl.service_ms
            batch[:, 3] = sl.t_ms
            batch[:, 4] = 0
            batch[:, 5] = -1
            batch[:, 6] = self.rng.integers(0, self.R, m_new) if self.R > 1 else 0
            batch[:, 7] = np.searchsorted(self.class_cum, self.rng.random(m_new), side="right")
            np.minimum(batch[:, 7], len(self.class_cum) - 1, out=batch[:, 7])
            if len(self.pending):
                due = self.pending[:, 0] < t0 + cfg.dt_ms
                if due.any():
                    batch = np.concatenate([batch, self.pending[due]])
                    self.pending = self.pending[~due]
            if len(batch):
                self._route(batch, t0)
            self._observe(t0 + cfg.dt_ms)
        res.wall_s = time.perf_counter() - wall0
        res.failed += len(self.pending)  # still waiting for a retry at the end: not completed
        return res

    def _decide(
        self, batch: FloatArray, rtt: FloatArray, t0: float
    ) -> tuple[IntArray, FloatArray | None, npt.NDArray[np.bool_]]:
        """Each router's choices for its requests: (region or -1, start times when the
        policy placed them itself, refused)."""
        cfg = self.cfg
        assert self.snapshot is not None
        m = len(batch)
        t = batch[:, 0]
        exclude = batch[:, 5].astype(np.int64)
        now_s = t0 / 1000.0
        refused = np.zeros(m, dtype=bool)
        if self.policy.sequential:
            table = self.policy.table(self.snapshot, cfg.model)
            choice, start = self._place_sequential(table, t, rtt, batch[:, 2], exclude)
            return choice, start, refused
        choice = np.full(m, -1, dtype=np.int64)
        owner = batch[:, 6].astype(np.int64)
        for r, policy in enumerate(self.policies):
            sel = np.flatnonzero(owner == r) if self.R > 1 else np.arange(m)
            if not len(sel):
                continue
            stats = self.router_stats[r]
            table = policy.table(self.snapshot, cfg.model)
            ch = policy.choose_batch(table, stats, rtt[sel], now_s, exclude[sel])
            adm = cfg.admission
            if adm is not None:
                fresh = (batch[sel, 4] == 0) & (ch >= 0)
                if fresh.any():
                    rows = sel[fresh]
                    expected = policy.best_expected_batch(table, stats, rtt[rows], now_s)
                    load, servers = policy.fleet_load(table, stats, now_s)
                    verdict = adm.decide_batch(
                        expected,
                        np.full(len(rows), cfg.deadline_ms),
                        batch[rows, 7].astype(np.int64),
                        load / servers if servers > 0 else None,
                    )
                    no = np.flatnonzero(fresh)[verdict != ADMITTED]
                    ch[no] = -1
                    refused[sel[no]] = True
            choice[sel] = ch
        return choice, None, refused

    def _route(self, batch: FloatArray, t0: float) -> None:
        cfg = self.cfg
        t = batch[:, 0]
        client = batch[:, 1].astype(np.int64)
        svc = batch[:, 2]
        attempt = batch[:, 4]
        owner = batch[:, 6].astype(np.int64)
        rtt = self.rtt_city[client]
        now_s = t0 / 1000.0
        choice, start, refused = self._decide(batch, rtt, t0)
        m = len(t)
        res = self.result
        routed = choice >= 0
        # refused at the router: answered (503) at arrival, never placed
        if refused.any():
            res.refused += int(refused.sum())
            res.refused_by_class += np.bincount(
                batch[refused, 7].astype(np.int64), minlength=len(res.refused_by_class)
            )
        # nobody could take it: the request fails outright
        res.failed += int((~routed & ~refused).sum())
        res.retried += int((attempt[routed] > 0).sum())
        ci = np.where(routed, choice, 0)
        half = rtt[np.arange(m), ci] / 2.0
        arrive = t + half
        down = routed & (arrive >= self.fail_at[ci]) & (arrive < self.recover_at[ci])
        placed = routed & ~down
        if start is None:
            start = self._place(ci, arrive, svc, placed)
        complete = start + svc
        lost = placed & (complete > self.fail_at[ci]) & (arrive < self.fail_at[ci])
        ok = placed & ~lost
        sent = np.bincount(ci[routed], minlength=self.n).astype(np.float64)
        if self.R == 1:
            rtt_sum = np.bincount(ci[routed], weights=2 * half[routed], minlength=self.n)
            self.stats.record_dispatches(self.sidx, sent, now_s, rtt_sum.astype(float))
        else:
            flat = owner[routed] * self.n + ci[routed]
            size = self.R * self.n
            by = np.bincount(flat, minlength=size).reshape(self.R, self.n).astype(float)
            wsum = np.bincount(flat, weights=2 * half[routed], minlength=size)
            wsum = wsum.reshape(self.R, self.n)
            for k, st in enumerate(self.router_stats):
                if by[k].any():
                    st.record_dispatches(self.sidx, by[k], now_s, wsum[k])
        sec = min(int(t0 // 1000.0), len(res.timeline) - 1)
        res.timeline[sec] += sent
        # failures the router sees: connect errors after one RTT; in-flight loss at the failure
        err_time = np.where(down, t + 2 * half, self.fail_at[ci] + half)
        err = down | lost
        if err.any():
            self._ring_add(
                self.ring_fail, err_time[err], ci[err], np.ones(int(err.sum())), owner[err]
            )
            again = err & (attempt + 1 < cfg.max_attempts)
            res.failed += int((err & ~again).sum())
            if again.any():
                retry = batch[again].copy()
                retry[:, 0] = err_time[again]
                retry[:, 4] += 1
                retry[:, 5] = ci[again]
                self.pending = np.concatenate([self.pending, retry])
        self.admitted += np.bincount(ci[placed], minlength=self.n)
        if ok.any():
            r = ci[ok]
            seen = complete[ok] + half[ok]
            wait = start[ok] - arrive[ok]
            s = svc[ok]
            who = owner[ok]
            self._ring_add(self.ring_ok, seen, r, np.ones(len(r)), who)
            self._ring_add(self.ring_wait, seen, r, wait, who)
            self._ring_add(self.ring_svc, seen, r, s, who)
            self._ring_add(self.ring_done, complete[ok], r, np.ones(len(r)))
            latency = seen - batch[ok, 3]
            res.within_deadline += int((latency <= cfg.deadline_ms).sum())
            overhead = latency - s
            res.latency.add(latency)
            res.overhead.add(overhead)
            res.completed += len(r)
            res.wait_ms_total += float(wait.sum())
            res.slo_met += int((overhead <= cfg.slo_overhead_ms).sum())
            res.served += np.bincount(r, minlength=self.n)
            res.busy_ms += np.bincount(r, weights=s, minlength=self.n)
            flat = client[ok] * self.n + r
            res.flows += np.bincount(flat, minlength=res.flows.size).reshape(res.flows.shape)

    def _place(
        self, region: IntArray, arrive: FloatArray, svc: FloatArray, placed: npt.NDArray[np.bool_]
    ) -> FloatArray:
        """FCFS on each region's servers: start = max(arrival, earliest free server)."""
        start = arrive.copy()
        idx = np.flatnonzero(placed)
        heaps = self.heaps
        replace = heapq.heapreplace
        out = []
        for r, a, s in zip(
            region[idx].tolist(), arrive[idx].tolist(), svc[idx].tolist(), strict=True
        ):
            h = heaps[r]
            f = h[0]
            st = a if a > f else f
            replace(h, st + s)
            out.append(st)
        start[idx] = out
        return start

    def _place_sequential(
        self, table: FleetTable, t: FloatArray, rtt: FloatArray, svc: FloatArray, exclude: IntArray
    ) -> tuple[IntArray, FloatArray]:
        """Decide and place request by request: the policy sees the queues as they are."""
        m = len(t)
        choice = np.full(m, -1, dtype=np.int64)
        start = t.copy()
        allowed = self.policy.candidates(table, self.stats, t[0] / 1000.0 if m else 0.0)
        free0 = self.free0
        for i in range(m):
            costs = self.policy.region_costs(table, self.stats, rtt[i], t[i] / 1000.0)
            costs = np.where(allowed, costs, INF)
            if exclude[i] >= 0:
                costs[exclude[i]] = INF
            r = int(np.argmin(costs))
            if not math.isfinite(costs[r]):
                continue
            choice[i] = r
            a = t[i] + rtt[i, r] / 2.0
            if self.fail_at[r] <= a < self.recover_at[r]:
                continue
            h = self.heaps[r]
            st = max(a, h[0])
            heapq.heapreplace(h, st + svc[i])
            start[i] = st
            if free0[r] < INF:
                free0[r] = h[0]
        return choice, start

    # --- what the router learns over time -------------------------------------------------

    def _ring_add(
        self,
        ring: FloatArray,
        when_ms: FloatArray,
        region: IntArray,
        values: FloatArray,
        router: IntArray | None = None,
    ) -> None:
        slot = (when_ms / self.cfg.ring_ms).astype(np.int64)
        slot = np.minimum(np.maximum(slot, self.next_slot), self.next_slot + self.L - 1)
        if router is None:
            np.add.at(ring, (slot % self.L, region), values)
        else:
            np.add.at(ring, (slot % self.L, router, region), values)

    def _observe(self, t_ms: float) -> None:
        """Hand the router every observation whose time slot has fully passed."""
        end = int(t_ms // self.cfg.ring_ms)
        if end <= self.next_slot:
            return
        rows = np.arange(self.next_slot, end) % self.L
        ok_all = self.ring_ok[rows].sum(axis=0)
        fail_all = self.ring_fail[rows].sum(axis=0)
        if ok_all.any() or fail_all.any():
            wait_all = self.ring_wait[rows].sum(axis=0)
            svc_all = self.ring_svc[rows].sum(axis=0)
            for r, st in enumerate(self.router_stats):
                ok, fail = ok_all[r], fail_all[r]
                if ok.any() or fail.any():
                    st.record_results(self.sidx, ok, fail, wait_all[r], svc_all[r], t_ms / 1000.0)
        self.completed += self.ring_done[rows].sum(axis=0)
        for ring in (self.ring_ok, self.ring_fail, self.ring_wait, self.ring_svc, self.ring_done):
            ring[rows] = 0.0
        self.next_slot = end
