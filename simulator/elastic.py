"""Elastic capacity in the simulator: the control plane's own autoscaler sizes every region.

:class:`ElasticFleet` plugs into :class:`~simulator.engine.Simulation` through its
``on_slice`` hook. Every ``interval_s`` of simulated time it shows the
:class:`~control_plane.autoscale.controller.Autoscaler` a routing snapshot (one
worker per GPU, the region's requests in service and queued), takes its
decisions (one deployment per region, all regions under one GPU budget) and
applies them: new GPUs serve after ``cold_start_s``; removed GPUs finish the work
already placed on them (drained) and take no more. GPU time is billed from the
moment a GPU is asked for, cold start included.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from control_plane.autoscale.controller import Autoscaler, DeploymentTarget
from control_plane.autoscale.policy import AutoscalePolicy, ScalingConfig
from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot, WorkerView
from simulator.engine import Simulation

__all__ = ["ElasticConfig", "ElasticFleet"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ElasticConfig:
    interval_s: float = 1.0  # how often the autoscaler decides (the snapshot period)
    cold_start_s: float = 2.0  # from the decision to a new GPU serving
    min_replicas: int = 1
    max_replicas: int = 10_000
    gpu_budget: int | None = None  # GPUs across all regions; None: unlimited
    scaling: ScalingConfig = field(
        default_factory=lambda: ScalingConfig(
            target_concurrency=0.7, stable_window_s=10.0, panic_window_s=2.0,
            scale_down_delay_s=5.0,
        )
    )  # fmt: skip


class ElasticFleet:
    def __init__(self, names: tuple[str, ...], config: ElasticConfig, model: str = "llm") -> None:
        self.names = names
        self.cfg = config
        self.model = model
        budget = {"gpu": config.gpu_budget} if config.gpu_budget is not None else None
        self.autoscaler = Autoscaler(AutoscalePolicy(config.scaling), gpu_budget=budget)
        self.targets = [
            DeploymentTarget(i, model, "1", name, config.min_replicas, config.max_replicas, "gpu")
            for i, name in enumerate(names)
        ]
        self.starting: list[tuple[float, int]] = []  # (ready at ms, region), one per GPU
        self.starting_gpu_ms = 0.0
        self.next_tick_ms = 0.0
        self.last_ms = 0.0
        self.version = 0
        self.peak = np.zeros(len(names), dtype=np.int64)  # most GPUs held at once, per region
        self.timeline: list[tuple[float, npt.NDArray[np.int64]]] = []  # (t s, serving GPUs)
        self.asked: list[npt.NDArray[np.int64]] = []  # GPUs asked for, per decision

    def _snapshot(self, sim: Simulation, t_ms: float) -> RoutingSnapshot:
        regions = []
        key = (f"{self.model}:1",)
        for i, name in enumerate(self.names):
            busy = sum(1 for x in sim.heaps[i] if x > t_ms)
            queued = max(0, int(sim.admitted[i] - sim.completed[i]) - busy)
            workers = tuple(
                WorkerView(f"{name}-{j}", "", HealthState.HEALTHY, key,
                           in_flight=busy if j == 0 else 0, queue_depth=queued if j == 0 else 0)
                for j in range(int(sim.servers[i]))
            )  # fmt: skip
            regions.append(RegionView(name, HealthState.HEALTHY, 0.0, 0.0, workers=workers))
        deployments = tuple(DeploymentRoute(self.model, "1", n) for n in self.names)
        self.version += 1
        return RoutingSnapshot(self.version, t_ms / 1000.0, tuple(regions), deployments)

    def _resize(self, sim: Simulation, i: int, gpus: int, t_ms: float) -> None:
        h = sim.heaps[i]
        if gpus > len(h):
            h.extend([t_ms] * (gpus - len(h)))
        else:
            h[:] = heapq.nsmallest(max(gpus, 1), h)  # the others drain what they hold
        heapq.heapify(h)
        sim.servers[i] = len(h)
        if np.isfinite(sim.free0[i]):
            sim.free0[i] = h[0]

    def __call__(self, sim: Simulation, t_ms: float) -> None:
        self.starting_gpu_ms += len(self.starting) * (t_ms - self.last_ms)
        self.last_ms = t_ms
        ready = [r for at, r in self.starting if at <= t_ms]
        if ready:
            self.starting = [(at, r) for at, r in self.starting if at > t_ms]
            for i in set(ready):
                self._resize(sim, i, int(sim.servers[i]) + ready.count(i), t_ms)
        if t_ms < self.next_tick_ms:
            return
        self.next_tick_ms = t_ms + self.cfg.interval_s * 1000.0
        now = t_ms / 1000.0
        self.autoscaler.observe(self._snapshot(sim, t_ms), now)
        desired = self.autoscaler.decide(self.targets, now)
        for i in range(len(self.names)):
            want = desired[i]
            pending = [k for k, (_, r) in enumerate(self.starting) if r == i]
            have = int(sim.servers[i]) + len(pending)
            if want > have:
                at = t_ms + self.cfg.cold_start_s * 1000.0
                self.starting.extend([(at, i)] * (want - have))
            elif want < have:
                cancel = min(len(pending), have - want)  # not started yet: cancel those first
                drop = set(pending[len(pending) - cancel :])
                self.starting = [s for k, s in enumerate(self.starting) if k not in drop]
                serving = int(sim.servers[i])
                if have - cancel > want:
                    self._resize(sim, i, max(serving - (have - cancel - want), 1), t_ms)
            held = int(sim.servers[i]) + sum(1 for _, r in self.starting if r == i)
            self.peak[i] = max(self.peak[i], held)
        self.timeline.append((now, sim.servers.copy()))
        self.asked.append(np.array([desired[i] for i in range(len(self.names))], dtype=np.int64))

    def gpu_seconds(self, sim: Simulation) -> float:
        """GPU time held over the run: serving GPUs and GPUs still starting."""
        return float(sim.result.server_ms.sum() + self.starting_gpu_ms) / 1000.0
