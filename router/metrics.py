"""The router's Prometheus metrics (``GET /metrics``), read from its core at scrape time.

Nothing is counted twice: the hot path only bumps the core's plain counters, and this
collector turns them, the snapshot's and keyring's versions and ages, and each region's
routing statistics (outstanding requests, EWMA wait and service time, open circuit, workers
ejected or slow) into
metric families when Prometheus asks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from router.core import RouterCore

__all__ = ["CONTENT_TYPE", "GenerationMetrics", "Histogram", "RouterMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class Histogram:
    """Plain bucket counts, per label value (the hot path adds; the collector reads)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, label: str, value: float) -> None:
        counts = self.counts.get(label)
        if counts is None:
            counts = self.counts[label] = [0] * (len(self.bounds) + 1)
            self.sums[label] = 0.0
        i = 0
        while i < len(self.bounds) and value > self.bounds[i]:
            i += 1
        counts[i] += 1
        self.sums[label] += value

    def family(self, name: str, documentation: str, label: str) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=[label])
        for value, counts in sorted(self.counts.items()):
            cumulative, running = [], 0
            for bound, n in zip((*self.bounds, float("inf")), counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric([value], cumulative, sum_value=self.sums[value])
        return family


class GenerationMetrics:
    """What streamed generations and the KV-aware choice add to the router's metrics.

    - time to first token per region: from the request reaching the router to its
      first event relayed to the client (routing and any failover before it included);
    - time per output token per region: (stream end - first token) / (tokens - 1), for
      OpenAI streams of at least two tokens (the router counts their token ids);
    - prefix affinity: of the generative requests routed by the KV-aware policy, those
      whose first choice was a worker the policy believed held at least one block of the
      prompt's prefix (it sent that prefix there before, and has not seen it evicted).
    """

    def __init__(self) -> None:
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.tpot = Histogram(TPOT_BUCKETS_S)
        self.affinity_requests = 0
        self.affinity_hits = 0

    def routed(self, hit: bool) -> None:
        self.affinity_requests += 1
        self.affinity_hits += hit

    def collect(self) -> Iterator[Metric]:
        yield self.ttft.family(
            "meridian_router_region_ttft_seconds",
            "Time to first token of streamed generations, from arrival at the router",
            "region",
        )
        yield self.tpot.family(
            "meridian_router_region_tpot_seconds",
            "Time per output token of streamed generations after the first",
            "region",
        )
        yield CounterMetricFamily(
            "meridian_router_prefix_affinity_requests",
            "Generative requests routed by the KV-aware policy",
            value=self.affinity_requests,
        )
        yield CounterMetricFamily(
            "meridian_router_prefix_affinity_hits",
            "Of those, requests sent to a worker believed to hold part of their prefix",
            value=self.affinity_hits,
        )
        rate = self.affinity_hits / self.affinity_requests if self.affinity_requests else 0.0
        yield GaugeMetricFamily(
            "meridian_router_prefix_affinity_hit_ratio",
            "prefix_affinity_hits / prefix_affinity_requests (0 before any)",
            value=rate,
        )


class _Collector(Collector):
    def __init__(self, core: RouterCore) -> None:
        self._core = core

    def collect(self) -> Iterator[Metric]:
        core = self._core
        core.observed.flush(time.monotonic())  # results held back for the next dispatch
        events = CounterMetricFamily(
            "meridian_router_events",
            "Requests by outcome (served, failed, rate_limited, upstream_5xx, ...)",
            labels=["event"],
        )
        for name, value in sorted(core.counters.items()):
            events.add_metric([name], value)
        yield events
        yield GaugeMetricFamily(
            "meridian_router_retry_budget_tokens",
            "Retries the budget allows right now",
            value=core.budget.tokens,
        )
        yield GaugeMetricFamily(
            "meridian_router_hedge_budget_tokens",
            "Hedges the budget allows right now",
            value=core.hedging.budget.tokens,
        )
        yield GaugeMetricFamily(
            "meridian_router_cold_start_held", "Requests held for a first worker", value=core.held
        )
        yield GaugeMetricFamily(
            "meridian_router_models_on_last_good_snapshot",
            "Models routed on their last good snapshot: the current one has all their regions down",
            value=len(core.last_good.held),
        )
        yield GaugeMetricFamily(
            "meridian_router_regions_unmonitored",
            "Regions routed on their last monitored view: their agent is lost, not their workers",
            value=len(core.unmonitored.held),
        )
        yield CounterMetricFamily(
            "meridian_router_snapshot_panics",
            "Times a snapshot with every region of a model down was not believed",
            value=core.last_good.panics,
        )
        for what, store in (("snapshot", core.store), ("keyring", core.keyring)):
            doc = store.current
            age = store.confirmed_age()
            yield GaugeMetricFamily(
                f"meridian_router_{what}_version",
                f"Version of the {store.what} the router uses (0: none)",
                value=doc.version if doc is not None else 0,
            )
            yield GaugeMetricFamily(
                f"meridian_router_{what}_confirmed_age_seconds",
                f"Seconds since the control plane's leader generated (or republished) the "
                f"{store.what} the router uses (-1: none)",
                value=age if age is not None else -1.0,
            )
        yield from core.generation.collect()
        yield from self._admission()
        yield from core.brownout_ledger.families(time.monotonic())
        yield from self._regions()

    def _admission(self) -> Iterator[Metric]:
        core = self._core
        counts = core.admission_counts
        refused = CounterMetricFamily(
            "meridian_router_admission_refused",
            "Requests refused at once (503, Retry-After) by reason (capacity: the fleet's load "
            "for the model is at the class's ceiling, or no place to hold it; deadline: the best "
            "region cannot meet it, or it ran out while held; shutdown: held when the router "
            "stopped) and request class",
            labels=["reason", "priority"],
        )
        for (reason, priority), value in sorted(counts.refused.items()):
            refused.add_metric([reason, priority], value)
        yield refused
        admitted = CounterMetricFamily(
            "meridian_router_admission_admitted",
            "Requests admitted by request class",
            labels=["priority"],
        )
        for priority, value in counts.admitted.items():
            admitted.add_metric([priority], value)
        yield admitted
        hold = core.hold
        yield GaugeMetricFamily(
            "meridian_router_hold_held",
            "Batch requests held now, waiting for the load to fall below the batch ceiling",
            value=hold.held,
        )
        yield CounterMetricFamily(
            "meridian_router_hold_released",
            "Held batch requests released (routed) as the load fell",
            value=hold.counts["released"],
        )
        yield CounterMetricFamily(
            "meridian_router_hold_expired",
            "Held batch requests refused (503) because their deadline or the hold limit came first",
            value=hold.counts["expired"],
        )
        refused_held = CounterMetricFamily(
            "meridian_router_hold_refused",
            "Batch requests refused (503) instead of held: the queue or the key's share was "
            "full, or the router was stopping",
            labels=["reason"],
        )
        for reason in ("full", "closed"):
            refused_held.add_metric([reason], hold.counts[reason])
        yield refused_held
        load = GaugeMetricFamily(
            "meridian_router_model_load",
            "Requests the fleet holds for the model over those it serves without queueing "
            "(1: every worker busy)",
            labels=["model"],
        )
        snap = core.store.current
        if snap is not None:
            now = time.monotonic()
            served = {m.partition(":")[0] for r in snap.regions for w in r.workers
                      for m in w.models}  # fmt: skip
            for model in sorted(served):
                fleet_load = core.admission.load(snap, core.stats, model, now)
                if fleet_load == fleet_load:  # not NaN
                    load.add_metric([model], fleet_load)
        yield load

    def _regions(self) -> Iterator[Metric]:
        core = self._core
        snap = core.store.current
        if snap is None:
            return
        now = time.monotonic()
        families = {
            "routable": GaugeMetricFamily(
                "meridian_router_region_routable", "1 when routable", labels=["region"]
            ),
            "outstanding": GaugeMetricFamily(
                "meridian_router_region_outstanding", "Requests in flight", labels=["region"]
            ),
            "wait": GaugeMetricFamily(
                "meridian_router_region_wait_ms", "EWMA of observed queueing", labels=["region"]
            ),
            "service": GaugeMetricFamily(
                "meridian_router_region_service_ms", "EWMA of observed service", labels=["region"]
            ),
            "circuit": GaugeMetricFamily(
                "meridian_router_region_circuit_open", "1 while ejected", labels=["region"]
            ),
            "ejected": GaugeMetricFamily(
                "meridian_router_workers_ejected",
                "Workers out of routing until they accept connections again",
                labels=["region"],
            ),
            "slow": GaugeMetricFamily(
                "meridian_router_workers_slow",
                "Workers far slower than they report (passed over, probed in the shadow)",
                labels=["region"],
            ),
        }
        outliers = core.outliers
        for region in snap.regions:
            stats = core.stats.region(region.name, now)
            label = [region.name]
            families["routable"].add_metric(label, 1.0 if region.state.routable else 0.0)
            families["outstanding"].add_metric(label, stats.outstanding)
            families["wait"].add_metric(label, stats.wait_ms)
            families["service"].add_metric(label, stats.service_ms)
            families["circuit"].add_metric(label, 1.0 if stats.circuit_open else 0.0)
            ids = [w.worker_id for w in region.workers]
            ejected = sum(1 for i in ids if outliers.is_ejected(i))
            families["ejected"].add_metric(label, ejected)
            families["slow"].add_metric(label, sum(1 for i in ids if outliers.is_slow(i, now)))
        yield from families.values()


class RouterMetrics:
    """One registry per router (no process-wide globals)."""

    def __init__(self, core: RouterCore) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(core))

    def render(self) -> bytes:
        return generate_latest(self.registry)
