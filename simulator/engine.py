"""The discrete-event fleet simulation, slice by slice.

Every region is a first-come-first-served queue in front of its GPUs (one heap of
server-free times). Every ``dt`` of simulated time: new arrivals plus due retries
are routed by the policy object (``choose_batch``, or request by request for
policies that need exact state), placed on the chosen regions' queues, and their
outcomes are written into rings keyed by the time the router will see them; as
simulated time passes those observations feed the router's ``RouterStats``.
The health plane publishes a routing snapshot every ``snapshot_interval_s`` and
at once when it detects a region failure, ``detection_s`` after it happened.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
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


class Simulation:
    """One policy over one fleet and one workload."""

    def __init__(
        self, policy: RoutingPolicy, fleet: FleetSpec, workload: Workload, config: SimConfig
    ) -> None:
        self.policy = policy
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
        self.stats = RouterStats(config.stats)
        self.sidx = self.stats.indices(fleet.names)
        self.all_idx = np.arange(n)
        # observation rings: what the router learns at a given time
        self.L = int(config.horizon_s * 1000.0 / config.ring_ms)
        self.ring_ok = np.zeros((self.L, n))
        self.ring_fail = np.zeros((self.L, n))
        self.ring_wait = np.zeros((self.L, n))
        self.ring_svc = np.zeros((self.L, n))
        self.ring_done = np.zeros((self.L, n))  # region-side completions (queue accounting)
        self.next_slot = 0
        self.admitted = np.zeros(n)
        self.completed = np.zeros(n)
        # retries waiting for their time: columns t, client, svc, origin, attempt, exclude
        self.pending = np.zeros((0, 6))
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
            policy=policy.name,
            regions=fleet.names,
            served=np.zeros(n),
            busy_ms=np.zeros(n),
            server_ms=np.zeros(n),
            flows=np.zeros((len(workload.places.names), n)),
            timeline=np.zeros((seconds, n)),
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
                    gpu_count=servers,
                    healthy_gpus=servers,
                    capacity_rps=servers * 1000.0 / mean_svc,
                    in_flight=busy,
                    queue_depth=max(0, in_system - busy),
                    workers=(worker,),
                )
            )
        return RoutingSnapshot(version=version, generated_at=t_ms / 1000.0, regions=tuple(regions))

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
            batch = np.empty((m_new, 6))
            batch[:, 0] = sl.t_ms
            batch[:, 1] = sl.client
            batch[:, 2] = sl.service_ms
            batch[:, 3] = sl.t_ms
            batch[:, 4] = 0
            batch[:, 5] = -1
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

    def _route(self, batch: FloatArray, t0: float) -> None:
        cfg = self.cfg
        assert self.snapshot is not None
        table = self.policy.table(self.snapshot, cfg.model)
        t = batch[:, 0]
        client = batch[:, 1].astype(np.int64)
        svc = batch[:, 2]
        attempt = batch[:, 4]
        exclude = batch[:, 5].astype(np.int64)
        rtt = self.rtt_city[client]
        now_s = t0 / 1000.0
        if self.policy.sequential:
            choice, start = self._place_sequential(table, t, rtt, svc, exclude)
        else:
            choice = self.policy.choose_batch(table, self.stats, rtt, now_s, exclude)
            start = None
        m = len(t)
        res = self.result
        routed = choice >= 0
        # nobody could take it: the request fails outright
        res.failed += int((~routed).sum())
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
        rtt_sum = np.bincount(ci[routed], weights=2 * half[routed], minlength=self.n).astype(float)
        self.stats.record_dispatches(self.sidx, sent, now_s, rtt_sum)
        sec = min(int(t0 // 1000.0), len(res.timeline) - 1)
        res.timeline[sec] += sent
        # failures the router sees: connect errors after one RTT; in-flight loss at the failure
        err_time = np.where(down, t + 2 * half, self.fail_at[ci] + half)
        err = down | lost
        if err.any():
            self._ring_add(self.ring_fail, err_time[err], ci[err], np.ones(int(err.sum())))
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
            self._ring_add(self.ring_ok, seen, r, np.ones(len(r)))
            self._ring_add(self.ring_wait, seen, r, wait)
            self._ring_add(self.ring_svc, seen, r, s)
            self._ring_add(self.ring_done, complete[ok], r, np.ones(len(r)))
            latency = seen - batch[ok, 3]
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
        self, ring: FloatArray, when_ms: FloatArray, region: IntArray, values: FloatArray
    ) -> None:
        slot = (when_ms / self.cfg.ring_ms).astype(np.int64)
        slot = np.minimum(np.maximum(slot, self.next_slot), self.next_slot + self.L - 1)
        np.add.at(ring, (slot % self.L, region), values)

    def _observe(self, t_ms: float) -> None:
        """Hand the router every observation whose time slot has fully passed."""
        end = int(t_ms // self.cfg.ring_ms)
        if end <= self.next_slot:
            return
        rows = np.arange(self.next_slot, end) % self.L
        ok = self.ring_ok[rows].sum(axis=0)
        fail = self.ring_fail[rows].sum(axis=0)
        if ok.any() or fail.any():
            self.stats.record_results(
                self.sidx,
                ok,
                fail,
                self.ring_wait[rows].sum(axis=0),
                self.ring_svc[rows].sum(axis=0),
                t_ms / 1000.0,
            )
        self.completed += self.ring_done[rows].sum(axis=0)
        for ring in (self.ring_ok, self.ring_fail, self.ring_wait, self.ring_svc, self.ring_done):
            ring[rows] = 0.0
        self.next_slot = end
