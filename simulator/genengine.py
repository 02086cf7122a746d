"""The generative fleet simulation: token-level service per worker, prefix caches, policies.

Every region runs ``workers`` engines. One engine (:class:`ServiceModel`) decodes up to
``max_seqs`` sequences at once (continuous batching: a request waits for a free slot),
prefills one prompt at a time at ``prefill_ms_per_token`` per *uncached* prompt token,
and then decodes at ``step_ms(b) / (1 - rho)`` per output token: the step time of a batch
of ``b`` sequences, stretched by the share ``rho`` of the engine's time its prefills took
in the last second (mixed steps carry prefill chunks). Its prefix cache is an LRU over
prompt blocks: a request's leading blocks found there are not prefilled, and all of its
blocks are cached (most recent) once it is prefilled.

Routing, every ``dt``: new arrivals plus retries are placed by the policy, one request
at a time in arrival order. The health plane publishes a routing snapshot every
``snapshot_interval_s`` (worker loads as reported then) and at once ``detection_s``
after a region fails; until then, requests sent there get a connection error one RTT
later and are retried elsewhere, and sequences running there when it fails are broken.

A router with admission (:mod:`simulator.genadmission`) may refuse a request instead of
placing it (``REFUSED_FULL``, ``REFUSED_LATE``): answered at once, counted as refused,
neither failed nor good.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.admission import sequence_load
from router.latency import FITTED, LatencyModel
from router.policies import FleetTable, RouterStats, choose_worker
from simulator.genmetrics import GenResult
from simulator.genworkload import GenWorkload

__all__ = [
    "REFUSED_FULL",
    "REFUSED_LATE",
    "GenConfig",
    "GenFleet",
    "GenSimulation",
    "Router",
    "ServiceModel",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
INF = math.inf
# what ``Router.choose`` answers instead of a worker: no worker (failed), or refused
NO_WORKER, REFUSED_LATE, REFUSED_FULL = -1, -2, -3


@dataclass(frozen=True, slots=True)
class ServiceModel:
    """One engine. Defaults: ``bench.llm``'s CPU figures (docs/benchmarks.md, bench:llm),
    divided by ``speedup``: a 200-token prefill chunk took 17.57 ms (0.0879 ms a token);
    decoding one sequence 2.4 ms a step (one-at-a-time TPOT p50), 27 at once 7.77 ms a step
    (so 2.19 ms + 0.206 ms per sequence). The KV cache holds ``cache_blocks`` blocks."""

    max_seqs: int = 64
    prefill_ms_per_token: float = 0.0879
    step_ms_base: float = 2.19
    step_ms_per_seq: float = 0.206
    speedup: float = 1.0
    cache_blocks: int = 4096
    block_tokens: int = 64
    max_rho: float = 0.9

    def step_ms(self, batch: int) -> float:
        return (self.step_ms_base + self.step_ms_per_seq * batch) / self.speedup

    def prefill_ms(self, tokens: float) -> float:
        return tokens * self.prefill_ms_per_token / self.speedup

    def capacity_rps(self, mean_prompt: float, mean_output: float, hit: float) -> float:
        """Requests/s one engine sustains: the lesser of its prefill and its decode limits."""
        prefill = self.prefill_ms(mean_prompt * (1.0 - hit))
        decode = mean_output * self.step_ms(self.max_seqs) / (1.0 - 0.5)
        return min(1000.0 / max(prefill, 1e-9), self.max_seqs * 1000.0 / (prefill + decode))


@dataclass(frozen=True, slots=True)
class GenFleet:
    names: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    workers: IntArray  # engines per region
    fail: tuple[tuple[str, float], ...] = ()  # (region, at_s): down from then on


@dataclass(frozen=True, slots=True)
class GenConfig:
    duration_s: float = 60.0
    dt_ms: float = 10.0
    snapshot_interval_s: float = 1.0
    detection_s: float = 1.0
    max_attempts: int = 3
    # bench.llm's rule on the engine model: TTFT <= 10x the unloaded median (a 1,046-token
    # prompt prefilled alone: 92 ms; network included in the measured TTFT), TPOT <= 5x
    # the unloaded one (one sequence a step: 2.4 ms)
    ttft_slo_ms: float = 920.0
    tpot_slo_ms: float = 12.0
    candidate_regions: int = 5  # the policies that pick workers look at the nearest few
    model: str = "chat"
    service: ServiceModel = field(default_factory=ServiceModel)
    latency: LatencyModel = FITTED


class Router:
    """How a policy picks a worker: ``choose(sim, i_client, prompt, chain_key, exclude)``
    returns a worker index or -1. Implementations live in :mod:`simulator.genpolicies`."""

    name = "router"
    region_level = False  # True: ``choose_regions`` picks regions for a whole slice

    def choose(self, sim: GenSimulation, req: tuple[int, int, int, list[int], int]) -> int:
        """A worker, ``NO_WORKER``, or a refusal (``REFUSED_FULL``/``REFUSED_LATE``);
        ``sim.budget_ms`` is what is left of the request's TTFT target."""
        raise NotImplementedError

    def choose_regions(self, sim: GenSimulation, client: IntArray, exclude: IntArray) -> IntArray:
        raise NotImplementedError

    def placed(self, sim: GenSimulation, worker: int, chain: list[int], prompt: int) -> None:
        """Told where each request went (the KV-aware policy records its prefix)."""


class GenSimulation:
    """One policy over one fleet and one generative workload."""

    def __init__(
        self, router: Router, fleet: GenFleet, workload: GenWorkload, config: GenConfig
    ) -> None:
        self.router = router
        self.fleet = fleet
        self.workload = workload
        self.cfg = config
        self.svc = config.service
        n = len(fleet.names)
        self.n = n
        self.rng = random.Random(7)
        counts = [int(x) for x in fleet.workers]
        self.w_region: list[int] = [r for r, c in enumerate(counts) for _ in range(c)]
        self.region_workers: list[list[int]] = []
        k = 0
        for c in counts:
            self.region_workers.append(list(range(k, k + c)))
            k += c
        nw = k
        self.nw = nw
        self.region_size = counts
        self.worker_ids = [f"{fleet.names[r]}-{i}" for i, r in enumerate(self.w_region)]
        self.w_name = [fleet.names[r] for r in self.w_region]
        self.w_str = [str(w) for w in range(nw)]  # the policies' worker ids
        self.worker_index = {wid: i for i, wid in enumerate(self.worker_ids)}
        self.slots: list[list[float]] = [[0.0] * self.svc.max_seqs for _ in range(nw)]
        self.ends: list[list[float]] = [[] for _ in range(nw)]
        self.pf_free = [0.0] * nw
        self.pf_window = [0.0] * nw
        self.rho = [0.0] * nw
        self.busy_until = [0.0] * nw
        self.cache: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(nw)]
        self.track_holders = False  # the oracle reads who holds each block
        self.holders: dict[int, set[int]] = {}
        self.fail_at = np.full(n, INF)
        for name, at_s in fleet.fail:
            self.fail_at[fleet.names.index(name)] = at_s * 1000.0
        self.fail_list = self.fail_at.tolist()
        # the router's view: loads reported in the last snapshot + sent since
        self.seen = [0.0] * nw
        self.seen_sum = [0.0] * n  # per region: the sum of ``seen`` over its workers
        # per region, a heap of (seen load, worker); a stored load may lag the worker's
        # (loads only grow between snapshots) and is refreshed when it reaches the top
        self.least_heaps: list[list[tuple[float, int]]] = [[] for _ in range(n)]
        self.outstanding_by_id: dict[str, int] = {}
        self.stats = RouterStats()
        self.sidx = self.stats.indices(fleet.names)
        self.snapshot: RoutingSnapshot | None = None
        self.table: FleetTable | None = None
        self.views: list[tuple[WorkerView, ...]] = []
        self.routable = [True] * n
        self.version = 0
        self.now = 0.0  # send time of the request being routed (ms)
        self.budget_ms = config.ttft_slo_ms  # what is left of its TTFT target
        # the model's sequences held (as reported, plus sent since) and slots, over the
        # routable regions: what the router's capacity admission reads
        self.held = 0.0
        self.slots_total = 0.0
        self.capacity_rps = self.svc.capacity_rps(workload.mean_prompt, workload.mean_output, 0.3)
        probe = FleetTable.build(self._snapshot(0.0), config.model, config.latency)
        self.rtt_city = probe.rtt_matrix(workload.places.lat, workload.places.lon)
        self.rtt_rows: list[list[float]] = self.rtt_city.tolist()
        self.near_order: list[list[int]] = np.argsort(self.rtt_city, axis=1).tolist()
        seconds = math.ceil(config.duration_s) + 1
        self.result = GenResult(
            policy=router.name,
            regions=fleet.names,
            duration_s=config.duration_s,
            timeline=np.zeros((seconds, n)),
            served=np.zeros(n),
        )

    # --- the router's view ----------------------------------------------------------------

    def load(self, w: int, now: float) -> int:
        """The true number of sequences at engine ``w`` (running or waiting)."""
        h = self.ends[w]
        while h and h[0] <= now:
            heapq.heappop(h)
        return len(h)

    def region_state(self, i: int, t_ms: float) -> HealthState:
        if self.fail_list[i] + self.cfg.detection_s * 1000.0 <= t_ms:
            return HealthState.DOWN
        return HealthState.HEALTHY

    def _snapshot(self, t_ms: float) -> RoutingSnapshot:
        f = self.fleet
        regions = []
        self.views = []
        model = (self.cfg.model + ":1",)
        for i, name in enumerate(f.names):
            ws = []
            for w in self.region_workers[i]:
                load = self.load(w, t_ms)
                running = min(load, self.svc.max_seqs)
                ws.append(
                    WorkerView(
                        self.worker_ids[w],
                        "",
                        HealthState.HEALTHY,
                        model,
                        in_flight=running,
                        queue_depth=load - running,
                        running_seqs=running,
                        waiting_seqs=load - running,
                    )
                )
            self.views.append(tuple(ws))
            n = len(ws)
            regions.append(
                RegionView(
                    name=name,
                    state=self.region_state(i, t_ms),
                    lat=float(f.lat[i]),
                    lon=float(f.lon[i]),
                    gpu_count=n,
                    healthy_gpus=n,
                    capacity_rps=n * self.capacity_rps,
                    in_flight=sum(w.in_flight for w in ws),
                    queue_depth=sum(w.queue_depth for w in ws),
                    workers=tuple(ws),
                )
            )
        return RoutingSnapshot(
            version=self.version, generated_at=t_ms / 1000.0, regions=tuple(regions)
        )

    def _publish(self, t_ms: float) -> None:
        self.version += 1
        self.snapshot = self._snapshot(t_ms)
        self.table = FleetTable.build(self.snapshot, self.cfg.model, self.cfg.latency)
        self.routable = self.table.routable.tolist()
        self.held, self.slots_total = sequence_load(
            self.snapshot, self.cfg.model, self.svc.max_seqs
        )
        self.seen = [float(w.in_flight + w.queue_depth) for views in self.views for w in views]
        seen = self.seen
        self.seen_sum = [sum(seen[w] for w in ws) for ws in self.region_workers]
        self.least_heaps = []
        for ws in self.region_workers:
            h = [(seen[w], w) for w in ws]
            heapq.heapify(h)
            self.least_heaps.append(h)
        self.outstanding_by_id = {}
        for w in range(self.nw):
            self.rho[w] = min(self.svc.max_rho, self.pf_window[w] / 1000.0)
            self.pf_window[w] = 0.0

    def seen_load(self, w: int) -> float:
        """What the router believes: the last report plus what it sent since."""
        return self.seen[w]

    def least_seen(self, r: int) -> int:
        """Region ``r``'s worker with the lowest seen load (ties: the lowest index)."""
        h = self.least_heaps[r]
        seen = self.seen
        while True:
            load, w = h[0]
            if seen[w] == load:
                return w
            heapq.heapreplace(h, (seen[w], w))

    def sent(self, w: int) -> None:
        """One more request sent to ``w`` since the last snapshot."""
        self.seen[w] += 1.0
        self.seen_sum[self.w_region[w]] += 1.0
        self.held += 1.0

    def candidates(self, client: int, exclude: int) -> list[int]:
        """The nearest ``candidate_regions`` routable regions, nearest first."""
        out = []
        for r in self.near_order[client]:
            if self.routable[r] and r != exclude:
                out.append(r)
                if len(out) == self.cfg.candidate_regions:
                    break
        return out

    def matched(self, w: int, chain: list[int]) -> int:
        """Leading blocks of ``chain`` in engine ``w``'s cache."""
        c = self.cache[w]
        k = 0
        for h in chain:
            if h not in c:
                break
            k += 1
        return k

    # --- one run --------------------------------------------------------------------------

    def run(self) -> GenResult:
        cfg = self.cfg
        res = self.result
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        n_slices = math.ceil(cfg.duration_s * 1000.0 / cfg.dt_ms)
        next_snap = 0.0
        fail_marks = sorted(
            x + cfg.detection_s * 1000.0 for x in self.fail_list if math.isfinite(x)
        )
        pending: list[tuple[float, int, int, int, int, int, float, int, int]] = []
        for k in range(n_slices):
            t0 = k * cfg.dt_ms
            if t0 >= next_snap or (fail_marks and fail_marks[0] <= t0):
                while fail_marks and fail_marks[0] <= t0:
                    fail_marks.pop(0)
                self._publish(t0)
                next_snap = t0 + cfg.snapshot_interval_s * 1000.0
            sl = self.workload.slice(t0, cfg.dt_ms)
            res.requests += len(sl.t_ms)
            # (send time, client, tenant, record, prompt, output, first send, attempt, exclude)
            batch = list(
                zip(
                    sl.t_ms.tolist(),
                    sl.client.tolist(),
                    sl.tenant.tolist(),
                    sl.record.tolist(),
                    sl.prompt.tolist(),
                    sl.output.tolist(),
                    sl.t_ms.tolist(),
                    [0] * len(sl.t_ms),
                    [-1] * len(sl.t_ms),
                    strict=True,
                )
            )
            if pending:
                end = t0 + cfg.dt_ms
                batch.extend(p for p in pending if p[0] < end)
                pending = [p for p in pending if p[0] >= end]
            if batch:
                pending.extend(self._route(batch, t0))
        res.failed += len(pending)
        res.wall_s = time.perf_counter() - wall0
        res.cpu_s = time.process_time() - cpu0
        return res

    def _route(
        self, batch: list[tuple[float, int, int, int, int, int, float, int, int]], t0: float
    ) -> list[tuple[float, int, int, int, int, int, float, int, int]]:
        cfg = self.cfg
        svc = self.svc
        res = self.result
        router = self.router
        wl = self.workload
        self.now = t0
        if router.region_level:
            clients = np.array([b[1] for b in batch], dtype=np.int64)
            excl = np.array([b[8] for b in batch], dtype=np.int64)
            regions = router.choose_regions(self, clients, excl).tolist()
        else:
            regions = None
        retry = []
        ttfts: list[float] = []
        tpots: list[float] = []
        sec = min(int(t0 // 1000.0), len(res.timeline) - 1)
        tl = res.timeline[sec]
        block = svc.block_tokens
        for j, req in enumerate(batch):
            t, client, tenant, record, prompt, output, first, attempt, exclude = req
            chain = wl.chain(tenant, record, prompt)
            self.now = t
            self.budget_ms = cfg.ttft_slo_ms - (t - first)
            if regions is not None:
                r = regions[j]
                if r < 0:
                    res.failed += 1
                    continue
                w = self._worker_in(r)
            else:
                w = router.choose(self, (client, prompt, output, chain, exclude))
                if w < 0:
                    if w == REFUSED_LATE:
                        res.refused_late += 1
                    elif w == REFUSED_FULL:
                        res.refused_full += 1
                    else:
                        res.failed += 1
                    continue
                r = self.w_region[w]
            self.sent(w)
            router.placed(self, w, chain, prompt)
            tl[r] += 1
            if attempt:
                res.retried += 1
            half = self.rtt_rows[client][r] / 2.0
            arrive = t + half
            fail = self.fail_list[r]
            if arrive >= fail:  # connection refused: retried after one RTT elsewhere
                if attempt + 1 < cfg.max_attempts:
                    retry.append(
                        (
                            t + 2 * half,
                            client,
                            tenant,
                            record,
                            prompt,
                            output,
                            first,
                            attempt + 1,
                            r,
                        )
                    )
                else:
                    res.failed += 1
                continue
            load = self.load(w, arrive)
            sh = self.slots[w]
            start = arrive if arrive > sh[0] else sh[0]
            hit = self.matched(w, chain)
            cached = min(hit * block, prompt - 1)
            uncached = prompt - cached
            pf = svc.prefill_ms(uncached)
            pf_start = start if start > self.pf_free[w] else self.pf_free[w]
            pf_end = pf_start + pf
            self.pf_free[w] = pf_end
            self.pf_window[w] += pf
            batch_size = load + 1 if load < svc.max_seqs else svc.max_seqs
            tpot = svc.step_ms(batch_size) / (1.0 - self.rho[w])
            finish = pf_end + output * tpot
            heapq.heapreplace(sh, finish)
            heapq.heappush(self.ends[w], finish)
            self._cache_insert(w, chain)
            res.prompt_tokens += prompt
            res.cached_tokens += cached
            bu = self.busy_until[w]
            res.gpu_ms += finish - (pf_start if pf_start > bu else bu) if finish > bu else 0.0
            if finish > bu:
                self.busy_until[w] = finish
            if finish > fail:  # the region fails while the stream is running: broken
                res.broken += 1
                res.failed += 1
                continue
            ttft = pf_end + half - first
            ttfts.append(ttft)
            tpots.append(tpot)
            res.completed += 1
            res.served[r] += 1
            if ttft <= cfg.ttft_slo_ms and tpot <= cfg.tpot_slo_ms:
                res.good += 1
        if ttfts:
            res.ttft.add(np.array(ttfts))
            res.tpot.add(np.array(tpots))
        if regions is not None:
            chosen = np.array(regions, dtype=np.int64)
            sent = np.bincount(chosen[chosen >= 0], minlength=self.n).astype(np.float64)
            self.stats.record_dispatches(self.sidx, sent, t0 / 1000.0)
        return retry

    def _worker_in(self, r: int) -> int:
        """Within a region: the router's power of two choices (``choose_worker``)."""
        views = self.views[r]
        v = choose_worker(views, self.rng, self.outstanding_by_id)
        assert v is not None
        w = self.worker_index[v.worker_id]
        self.outstanding_by_id[v.worker_id] = self.outstanding_by_id.get(v.worker_id, 0) + 1
        return w

    def _cache_insert(self, w: int, chain: list[int]) -> None:
        c = self.cache[w]
        track = self.track_holders
        for h in chain:
            if h in c:
                c.move_to_end(h)
            else:
                c[h] = None
                if track:
                    self.holders.setdefault(h, set()).add(w)
        limit = self.svc.cache_blocks
        while len(c) > limit:
            gone, _ = c.popitem(last=False)
            if track:
                s = self.holders.get(gone)
                if s is not None:
                    s.discard(w)
                    if not s:
                        del self.holders[gone]
