"""Brownout: a saturated region serves its overflow from a deployment's quantized variant.

A deployment may name a variant to degrade to (``degrade_to``, e.g. ``int8``: its accuracy
against the base is on the variant's record). Its region then runs a *reserve* worker of
that variant beside the base workers; the reserve reports its model as
``name:version:variant`` and takes no traffic of its own. When the region chosen for a
request is saturated, the request is served by the reserve instead of queueing behind the
base workers: a cheaper engine run, so more requests per GPU, at the variant's recorded
accuracy. The answer says so (``x-meridian-variant``).

The region's *load* for the model is what its base workers hold over what they serve
without queueing (the same Little's-law estimate as admission, per region)::

    load = sum(max(outstanding_w, queue_w + in_flight_w)) / sum(capacity_w * service_w)

with ``outstanding_w`` this router's requests on worker w (fresh), ``queue_w + in_flight_w``
its last report (other routers' requests too), ``capacity_w`` its measured requests/s (else
the region's capacity shared among its workers) and ``service_w`` its median latency (else
the router's own EWMA of attempt times in the region, else a default). A request overflows
while ``load >= max_load`` and the reserve is less loaded than the base; so the base stays
busy and only the excess goes to the variant. When load falls, requests stay on the base
again: nothing has to be switched back.

A region is *in brownout* from its first overflow until ``hold_s`` passes without one (the
hysteresis: one quiet request does not end it, a blip does not start and stop it twice a
second). Entries and exits are kept for the control plane's audit log.

:class:`BrownoutPolicy` is pure (plain data in, a choice out); :class:`BrownoutLedger`
holds the counts and the per-region state for the metrics and the reports.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from meridian.snapshot import RegionView, RoutingSnapshot, WorkerView

__all__ = [
    "VARIANT_HEADER",
    "BrownoutConfig",
    "BrownoutLedger",
    "BrownoutPolicy",
    "Overflow",
    "Transition",
    "label_variant",
]

VARIANT_HEADER = b"x-meridian-variant"


def label_variant(label: str) -> str:
    """``name:version:variant`` → ``variant``; ``""`` for a base label."""
    parts = label.split(":", 2)
    return parts[2] if len(parts) == 3 else ""


@dataclass(frozen=True, slots=True)
class BrownoutConfig:
    max_load: float = 0.0  # a region overflows to its variant at this load; 0: never
    hold_s: float = 5.0  # in brownout until this long without an overflow
    default_service_ms: float = 50.0  # a worker that reports no latency yet

    @property
    def enabled(self) -> bool:
        return self.max_load > 0


@dataclass(frozen=True, slots=True)
class Overflow:
    """Serve the request on ``worker``, a reserve of ``variant``; ``load`` was the base's."""

    variant: str
    worker: WorkerView
    load: float


def _load(
    workers: Sequence[WorkerView],
    outstanding: Mapping[str, int],
    fallback_rps: float,
    fallback_ms: float,
) -> float:
    """What ``workers`` hold over what they serve without queueing (inf: no capacity)."""
    held = slots = 0.0
    for w in workers:
        held += max(outstanding.get(w.worker_id, 0), w.queue_depth + w.in_flight)
        capacity = w.capacity_rps or fallback_rps
        slots += capacity * (w.latency_p50_ms or fallback_ms) / 1000.0
    return held / slots if slots > 0 else float("inf")


class BrownoutPolicy:
    """Which requests a saturated region serves from its ``degrade_to`` variant."""

    def __init__(self, config: BrownoutConfig | None = None) -> None:
        self.config = config or BrownoutConfig()
        self._snap: RoutingSnapshot | None = None
        # (model, region) → version → the variant it degrades to
        self._degrade: dict[tuple[str, str], dict[str, str]] = {}
        self._reserves: dict[tuple[str, str, str | None], tuple[WorkerView, ...]] = {}

    def _variants(self, snap: RoutingSnapshot, model: str, region: str) -> dict[str, str]:
        if snap is not self._snap:
            self._snap, self._reserves = snap, {}
            self._degrade = {}
            for d in snap.deployments:
                if d.degrade_to:
                    self._degrade.setdefault((d.model, d.region), {})[d.version] = d.degrade_to
        return self._degrade.get((model, region), {})

    def reserves(
        self, snap: RoutingSnapshot, region: RegionView, model: str, version: str | None
    ) -> tuple[WorkerView, ...]:
        """The routable reserve workers of ``region`` for ``model`` (``version`` if given)
        whose variant is a deployment's ``degrade_to`` there."""
        variants = self._variants(snap, model, region.name)
        if not variants:
            return ()
        key = (model, region.name, version)
        found = self._reserves.get(key)
        if found is None:
            wanted = {
                f"{model}:{v}:{variant}"
                for v, variant in variants.items()
                if version is None or v == version
            }
            found = self._reserves[key] = tuple(
                w for w in region.workers if w.state.routable and any(m in wanted for m in w.models)
            )
        return found

    def decide(
        self,
        snap: RoutingSnapshot,
        region: RegionView,
        model: str,
        version: str | None,
        base: Sequence[WorkerView],
        outstanding: Mapping[str, int],
        rng: random.Random,
        observed_ms: float = 0.0,
    ) -> Overflow | None:
        """The reserve worker to serve this request on, or None to stay on ``base``.
        ``observed_ms``: the router's own service time for the region, for workers that
        report no latency (else the configured default)."""
        if not self.config.enabled or not base:
            return None
        reserves = self.reserves(snap, region, model, version)
        if not reserves:
            return None
        n = sum(1 for w in region.workers if w.state.routable) or 1
        share = region.capacity_rps / n
        default_ms = observed_ms if observed_ms > 0 else self.config.default_service_ms
        load = _load(base, outstanding, share, default_ms)
        if not self.config.max_load <= load < float("inf"):  # below, or capacity unknown
            return None
        if _load(reserves, outstanding, share, default_ms) >= load:
            return None  # the variant is as full as the base: queue where it is best
        worker = reserves[0] if len(reserves) == 1 else min(
            rng.sample(reserves, 2),
            key=lambda w: max(outstanding.get(w.worker_id, 0), w.queue_depth + w.in_flight),
        )  # fmt: skip
        variants = self._variants(snap, model, region.name)
        variant = next((label_variant(m) for m in worker.models
                        if label_variant(m) in variants.values()), "")  # fmt: skip
        return Overflow(variant, worker, load)


@dataclass(frozen=True, slots=True)
class Transition:
    region: str
    model: str
    variant: str
    entered: bool  # False: left
    load: float

    def to_dict(self) -> dict[str, object]:
        return {
            "region": self.region,
            "model": self.model,
            "variant": self.variant,
            "entered": self.entered,
            "load": round(self.load, 3),
        }


class BrownoutLedger:
    """Overflows served, regions in brownout (with hysteresis) and their transitions."""

    MAX_PENDING = 1000  # transitions kept for a reporter; beyond, the oldest are dropped

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.served: defaultdict[tuple[str, str], int] = defaultdict(int)  # (model, variant)
        self._last: dict[tuple[str, str], tuple[float, str, float]] = {}  # → (at, variant, load)
        self._pending: list[Transition] = []

    def overflowed(self, region: str, model: str, overflow: Overflow, now: float) -> None:
        self.served[(model, overflow.variant)] += 1
        key = (region, model)
        if key not in self._last:
            self._note(Transition(region, model, overflow.variant, True, overflow.load))
        self._last[key] = (now, overflow.variant, overflow.load)

    def _expire(self, now: float) -> None:
        for key, (at, variant, load) in list(self._last.items()):
            if now - at >= self.hold_s:
                del self._last[key]
                self._note(Transition(key[0], key[1], variant, False, load))

    def _note(self, transition: Transition) -> None:
        self._pending.append(transition)
        if len(self._pending) > self.MAX_PENDING:
            del self._pending[: -self.MAX_PENDING]

    def active(self, now: float) -> dict[tuple[str, str], str]:
        """(region, model) → variant, for every pair in brownout now."""
        self._expire(now)
        return {key: variant for key, (_, variant, _) in self._last.items()}

    def transitions(self, now: float) -> list[Transition]:
        """Entries and exits since the last call (oldest first)."""
        self._expire(now)
        out, self._pending = self._pending, []
        return out

    def families(self, now: float) -> Iterator[Metric]:
        served = CounterMetricFamily(
            "meridian_router_brownout",
            "Requests a saturated region served from a deployment's degrade_to variant",
            labels=["model", "variant"],
        )
        for (model, variant), n in sorted(self.served.items()):
            served.add_metric([model, variant], n)
        yield served
        active = self.active(now)
        regions = GaugeMetricFamily(
            "meridian_router_brownout_regions",
            "Regions in brownout for a model (an overflow within the hold time)",
            labels=["model"],
        )
        per_model: defaultdict[str, int] = defaultdict(int)
        for _, model in active:
            per_model[model] += 1
        for model, n in sorted(per_model.items()):
            regions.add_metric([model], n)
        yield regions
