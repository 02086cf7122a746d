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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from router.core import RouterCore

__all__ = ["CONTENT_TYPE", "RouterMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


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
        yield from self._regions()

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
