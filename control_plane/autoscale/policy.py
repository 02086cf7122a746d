"""The autoscaling policy: a pure strategy from load reports to a desired replica count.

One policy object decides for one deployment (a model version in a region) at a
time; every input is passed in (the reports of a recent window, the current
replicas, the limits, the clock, the policy's own small state), so the same
object runs in the control plane and in the fleet simulator.

The signal is *demand in workers*: per report, ``in_flight + queue_depth``
over the per-worker target concurrency, or the observed throughput over the
per-worker target rate when that is higher. A generative deployment (its workers
report sequences or KV blocks) counts *sequences* instead: running + waiting over
``target_seqs`` per worker, or KV occupancy over ``target_kv_occupancy`` when that is
higher -- a worker whose KV cache is nearly full preempts and queues sequences long
before its request count looks high. It is averaged over two windows:

- the **stable** window (default 60 s) decides in ordinary times, so a load that
  wobbles inside the tolerance band never changes the replica count;
- the **panic** window (default 6 s) reacts to a burst: when its demand reaches
  ``panic_threshold`` times the current capacity, the policy enters panic mode,
  scales up at once to the panic demand (bounded by ``max_scale_up_rate`` per
  decision) and does not scale down until the burst has been over for a whole
  stable window.

Scaling down is slow on purpose: only after the stable demand has stayed below
the current count for ``scale_down_delay_s``, and at most by
``max_scale_down_rate`` per decision. With ``min_replicas == 0`` a deployment
idle for that long goes to zero; any demand (a report, or a router asking for
a model that has no worker) brings it back to at least one at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

__all__ = [
    "AutoscalePolicy",
    "Limits",
    "LoadSample",
    "ScalerState",
    "ScalingConfig",
    "ScalingDecision",
]


@dataclass(frozen=True, slots=True)
class ScalingConfig:
    target_concurrency: float = 4.0  # in-flight + queued requests one worker should carry
    target_rps: float = 0.0  # requests/s one worker should serve; 0: concurrency only
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0  # panic when panic demand >= this x current replicas
    tolerance: float = 0.1  # no change while demand is within +-10% of the current count
    max_scale_up_rate: float = 10.0  # at most x10 (and at least +1) per decision
    max_scale_down_rate: float = 2.0  # at most /2 (and at least -1) per decision
    scale_down_delay_s: float = 30.0  # demand must stay lower this long before scaling down
    target_seqs: float = 12.0  # generative: running + waiting sequences one worker should carry
    target_kv_occupancy: float = 0.8  # generative: share of a worker's KV blocks in use

    def __post_init__(self) -> None:
        if self.target_concurrency <= 0:
            raise ValueError("target_concurrency must be > 0")
        if not 0 < self.panic_window_s <= self.stable_window_s:
            raise ValueError("need 0 < panic_window_s <= stable_window_s")
        if self.target_seqs <= 0 or not 0 < self.target_kv_occupancy <= 1:
            raise ValueError("need target_seqs > 0 and 0 < target_kv_occupancy <= 1")
        if self.max_scale_up_rate <= 1 or self.max_scale_down_rate <= 1:
            raise ValueError("scale rates must be > 1")


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One report of a deployment's load, summed over its ready workers."""

    at: float  # monotonic seconds
    in_flight: float = 0.0
    queue_depth: float = 0.0
    throughput_rps: float = 0.0
    demand: float = 0.0  # requests held elsewhere for lack of a worker (router's hold)
    # generative workers: sequences and KV blocks, summed over ``workers`` ready workers
    running_seqs: float = 0.0
    waiting_seqs: float = 0.0
    kv_blocks_used: float = 0.0
    kv_blocks_total: float = 0.0
    workers: int = 0

    @property
    def generative(self) -> bool:
        return self.kv_blocks_total > 0 or self.running_seqs + self.waiting_seqs > 0


@dataclass(frozen=True, slots=True)
class Limits:
    min_replicas: int
    max_replicas: int

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


@dataclass(frozen=True, slots=True)
class ScalerState:
    """What the policy remembers between decisions (plain data, returned with each decision)."""

    panic_until: float = -math.inf  # panic mode holds until this time
    below_since: float | None = None  # when stable demand first fell below the current count
    last_change_at: float = -math.inf


@dataclass(frozen=True, slots=True)
class ScalingDecision:
    desired: int
    current: int
    reason: str
    at: float
    panic: bool = False
    stable_demand: float = 0.0  # in workers
    panic_demand: float = 0.0  # in workers

    @property
    def changed(self) -> bool:
        return self.desired != self.current


class AutoscalePolicy:
    def __init__(self, config: ScalingConfig | None = None) -> None:
        self.config = config or ScalingConfig()

    def demand_of(self, sample: LoadSample) -> float:
        """A report's demand in workers."""
        c = self.config
        by_rate = sample.throughput_rps / c.target_rps if c.target_rps > 0 else 0.0
        held = sample.demand / c.target_concurrency
        if sample.generative:
            by_seqs = (sample.running_seqs + sample.waiting_seqs) / c.target_seqs
            by_kv = 0.0
            if sample.kv_blocks_total > 0 and sample.workers > 0:
                per_worker = sample.kv_blocks_total / sample.workers
                by_kv = sample.kv_blocks_used / (c.target_kv_occupancy * per_worker)
            return max(by_seqs + held, by_kv + held, by_rate)
        by_concurrency = (sample.in_flight + sample.queue_depth) / c.target_concurrency
        return max(by_concurrency + held, by_rate)

    def _average(self, samples: Sequence[LoadSample], since: float) -> float | None:
        values = [self.demand_of(s) for s in samples if s.at >= since]
        return sum(values) / len(values) if values else None

    def decide(
        self,
        samples: Sequence[LoadSample],
        current: int,
        limits: Limits,
        now: float,
        state: ScalerState | None = None,
    ) -> tuple[ScalingDecision, ScalerState]:
        """The desired replicas now; ``samples`` may hold older reports (they are ignored)."""
        c = self.config
        st = state or ScalerState()
        stable = self._average(samples, now - c.stable_window_s)
        panic = self._average(samples, now - c.panic_window_s)

        def out(
            desired: int, reason: str, s: ScalerState, in_panic: bool = False
        ) -> tuple[ScalingDecision, ScalerState]:
            bounded = limits.clamp(desired)
            if bounded != desired:
                side = "max" if bounded < desired else "min"
                reason += f"; held at {side}_replicas={bounded}"
            if bounded != current:
                s = replace(s, last_change_at=now, below_since=None)
            decision = ScalingDecision(
                bounded, current, reason, now, in_panic, round(stable or 0.0, 3),
                round(panic or 0.0, 3),
            )  # fmt: skip
            return decision, s

        if current < limits.min_replicas or current > limits.max_replicas:
            return out(
                current, f"outside limits [{limits.min_replicas}, {limits.max_replicas}]", st
            )
        if stable is None or panic is None:
            return out(current, "no load reports in the window; holding", st)

        # activation: no worker, but someone wants one
        if current == 0:
            if panic > 0:
                want = max(1, math.ceil(panic))
                st = replace(st, panic_until=now + c.stable_window_s)
                return out(want, f"activation: demand {panic:.2f} workers with none running", st,
                           True)  # fmt: skip
            return out(0, "idle at zero", st)

        # panic: a burst well above what runs now
        if panic >= c.panic_threshold * current:
            st = replace(st, panic_until=now + c.stable_window_s)
        if now < st.panic_until:
            want = max(current, math.ceil(panic * (1 - c.tolerance)))
            want = min(want, max(current + 1, math.floor(current * c.max_scale_up_rate)))
            reason = (
                f"panic: {c.panic_window_s:g}s demand {panic:.2f} workers "
                f"for {current} running; no scale-down until the burst passes"
            )
            return out(want, reason, replace(st, below_since=None), True)

        # ordinary times: the stable window, with a tolerance band around the current count
        if stable > current * (1 + c.tolerance):
            want = min(
                math.ceil(stable), max(current + 1, math.floor(current * c.max_scale_up_rate))
            )
            reason = f"stable {c.stable_window_s:g}s demand {stable:.2f} workers > {current}"
            return out(want, reason, replace(st, below_since=None))
        down = math.ceil(stable)
        if stable >= current * (1 - c.tolerance) or down >= current:
            return out(current, f"within band: demand {stable:.2f} workers for {current}",
                       replace(st, below_since=None))  # fmt: skip
        below = st.below_since if st.below_since is not None else now
        st = replace(st, below_since=below)
        waited = now - below
        if waited < c.scale_down_delay_s:
            reason = (
                f"demand {stable:.2f} workers < {current}; scale-down in "
                f"{c.scale_down_delay_s - waited:.0f}s if it stays"
            )
            return out(current, reason, st)
        want = max(down, current - max(1, current - math.ceil(current / c.max_scale_down_rate)))
        if want == 0 and limits.min_replicas == 0:
            reason = f"idle for {waited:.0f}s: scale to zero"
        else:
            reason = f"demand {stable:.2f} workers below {current} for {waited:.0f}s"
        return out(want, reason, st)
