"""The autoscaler: load windows per deployment, decisions with reasons, the GPU budget.

:class:`Autoscaler` holds no sockets and no clock: the leader feeds it every
routing snapshot it publishes (:meth:`observe`) and the routers' requests for a
model with no worker (:meth:`note_demand`), and asks it for the replicas each
deployment should run (:meth:`decide`), passing the deployments and the time.
The simulator drives the very same object. It also measures how long new
capacity takes to serve: from a scale-up decision (or a cold start from zero)
until that many workers are ready in the snapshot.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from control_plane.autoscale.budget import Claim, allocate
from control_plane.autoscale.policy import (
    AutoscalePolicy,
    Limits,
    LoadSample,
    ScalerState,
    ScalingDecision,
)
from meridian.snapshot import RoutingSnapshot

__all__ = ["Autoscaler", "DeploymentTarget", "ScalingStatus"]

Key = tuple[str, str, str]  # model, version, region


@dataclass(frozen=True, slots=True)
class DeploymentTarget:
    """A deployment as the autoscaler needs it (from the registry)."""

    id: int
    model: str
    version: str
    region: str
    min_replicas: int
    max_replicas: int
    gpu_type: str = ""
    pinned: bool = False
    pinned_replicas: int | None = None
    gpus_per_replica: int = 1

    @property
    def key(self) -> Key:
        return (self.model, self.version, self.region)


@dataclass(frozen=True, slots=True)
class ScalingStatus:
    deployment_id: int
    ready: int  # routable workers serving it in the latest snapshot
    desired: int
    pinned: bool
    last: ScalingDecision | None
    decisions: tuple[ScalingDecision, ...]  # the latest changes, oldest first
    ready_after_s: tuple[float, ...]  # decision -> capacity serving, latest last
    cold_starts_s: tuple[float, ...]  # from zero -> first worker serving, latest last


@dataclass
class _Track:
    samples: collections.deque[LoadSample]
    state: ScalerState = field(default_factory=ScalerState)
    desired: int | None = None
    ready: int = 0
    last: ScalingDecision | None = None
    decisions: collections.deque[ScalingDecision] = field(
        default_factory=lambda: collections.deque(maxlen=20)
    )
    waiting: tuple[int, float, bool] | None = None  # (target, since, from zero)
    ready_after: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20)
    )
    cold_starts: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=20)
    )


class Autoscaler:
    def __init__(
        self,
        policy: AutoscalePolicy | None = None,
        *,
        gpu_budget: Mapping[str, int] | None = None,
        max_samples: int = 600,
        on_demand: Callable[[], None] | None = None,
    ) -> None:
        self.policy = policy or AutoscalePolicy()
        self.gpu_budget = dict(gpu_budget or {})
        self._max_samples = max_samples
        self._tracks: dict[Key, _Track] = {}
        self._ids: dict[int, Key] = {}
        self._demand: list[tuple[str, str | None, float]] = []
        self._on_demand = on_demand

    def _track(self, key: Key) -> _Track:
        track = self._tracks.get(key)
        if track is None:
            track = _Track(collections.deque(maxlen=self._max_samples))
            self._tracks[key] = track
        return track

    # --- inputs ----------------------------------------------------------------------------

    def observe(self, snapshot: RoutingSnapshot, now: float) -> None:
        """One load sample per deployment in ``snapshot`` (zero where nothing serves it)."""
        for d in snapshot.deployments:
            key = (d.model, d.version, d.region)
            track = self._track(key)
            region = snapshot.region(d.region)
            name = f"{d.model}:{d.version}"
            in_flight = queue = 0.0
            rps = running = waiting = kv_used = kv_total = 0.0
            ready = 0
            if region is not None and region.state.routable:
                for w in region.workers:
                    if w.state.routable and name in w.models:
                        ready += 1
                        in_flight += w.in_flight
                        queue += w.queue_depth
                        rps += w.throughput_rps
                        running += w.running_seqs
                        waiting += w.waiting_seqs
                        kv_used += w.kv_blocks_used
                        kv_total += w.kv_blocks_used + w.kv_blocks_free
            track.ready = ready
            track.samples.append(
                LoadSample(
                    now, in_flight, queue, rps, 0.0, running, waiting, kv_used, kv_total, ready
                )
            )
            if track.desired is None:
                track.desired = ready
            if track.waiting is not None:
                target, since, from_zero = track.waiting
                if ready >= target:
                    track.ready_after.append(round(now - since, 3))
                    if from_zero:
                        track.cold_starts.append(round(now - since, 3))
                    track.waiting = None

    def note_demand(self, model: str, region: str | None, now: float) -> None:
        """A router holds a request for ``model`` that no worker serves (``region``: a hint)."""
        self._demand.append((model, region, now))
        if self._on_demand is not None:
            self._on_demand()  # decide now rather than at the next period

    # --- decisions -------------------------------------------------------------------------

    def _place_demand(self, targets: Sequence[DeploymentTarget]) -> None:
        for model, hint, at in self._demand:
            mine = [t for t in targets if t.model == model and not t.pinned]
            if not mine:
                continue
            chosen = next((t for t in mine if t.region == hint), None)
            if chosen is None:  # the deployment already running most, else the first one
                chosen = max(mine, key=lambda t: (self._track(t.key).desired or 0, -t.id))
            self._track(chosen.key).samples.append(LoadSample(at, demand=1.0))
        self._demand.clear()

    def decide(
        self,
        targets: Sequence[DeploymentTarget],
        now: float,
        region_gpus: Mapping[str, int] | None = None,
    ) -> dict[int, int]:
        """Replicas per deployment id, within min/max, the pins and the GPU budget."""
        self._place_demand(targets)
        self._ids = {t.id: t.key for t in targets}
        for gone in set(self._tracks) - {t.key for t in targets}:
            del self._tracks[gone]  # the deployment was deleted
        wanted: dict[int, ScalingDecision] = {}
        claims: list[Claim] = []
        for t in targets:
            track = self._track(t.key)
            current = track.desired if track.desired is not None else t.min_replicas
            if t.pinned:
                n = t.pinned_replicas if t.pinned_replicas is not None else current
                decision = ScalingDecision(n, current, f"pinned by an operator at {n}", now)
            else:
                window = [s for s in track.samples if s.at <= now]
                limits = Limits(t.min_replicas, t.max_replicas)
                decision, track.state = self.policy.decide(
                    window, current, limits, now, track.state
                )
            wanted[t.id] = decision
            demand = max(decision.stable_demand, decision.panic_demand if decision.panic else 0.0)
            claims.append(
                Claim(
                    t.id, t.region, t.gpu_type, decision.desired,
                    minimum=decision.desired if t.pinned else t.min_replicas,
                    demand=demand, gpus_per_replica=t.gpus_per_replica,
                )
            )  # fmt: skip
        allocation = allocate(claims, self.gpu_budget, region_gpus)
        out: dict[int, int] = {}
        for t in targets:
            decision = wanted[t.id]
            granted = allocation.granted[t.id]
            if granted != decision.desired:
                decision = ScalingDecision(
                    granted, decision.current, f"{decision.reason}; {allocation.limited[t.id]}",
                    now, decision.panic, decision.stable_demand, decision.panic_demand,
                )  # fmt: skip
            self._record(self._track(t.key), decision, now)
            out[t.id] = granted
        return out

    def _record(self, track: _Track, decision: ScalingDecision, now: float) -> None:
        track.last = decision
        if decision.desired != decision.current:
            track.decisions.append(decision)
            if decision.desired > decision.current:
                if track.waiting is not None:  # still waiting for an earlier scale-up
                    track.waiting = (decision.desired, track.waiting[1], track.waiting[2])
                else:
                    track.waiting = (decision.desired, now, decision.current == 0)
            else:
                track.waiting = None
        track.desired = decision.desired

    # --- reading ---------------------------------------------------------------------------

    def status(self, deployment_id: int) -> ScalingStatus | None:
        key = self._ids.get(deployment_id)
        track = self._tracks.get(key) if key is not None else None
        if track is None:
            return None
        return ScalingStatus(
            deployment_id=deployment_id,
            ready=track.ready,
            desired=track.desired if track.desired is not None else 0,
            pinned=track.last is not None and track.last.reason.startswith("pinned"),
            last=track.last,
            decisions=tuple(track.decisions),
            ready_after_s=tuple(track.ready_after),
            cold_starts_s=tuple(track.cold_starts),
        )

    def desired(self, model: str, version: str, region: str) -> int | None:
        track = self._tracks.get((model, version, region))
        return track.desired if track is not None else None
