"""Routing policies: pure strategy objects over (snapshot, router stats, request).

How a router uses them, per request::

    policy = MeridianPolicy(refresh_s=0.001)  # one per router; NearestPolicy() etc. alike
    stats = RouterStats()                     # the router's own per-region figures
    now = time.monotonic()
    ranked = policy.rank(snapshot, stats, RouteRequest(model, lat, lon), now)
    for region in ranked[:retry_budget]:      # best first; retries go down the list
        worker = pick_worker(snapshot.region(region), model, rng, outstanding_by_worker)
        version = versions.pick(model, region, rng)   # versions = VersionPicker(snapshot)
        stats.on_dispatch(region, now, rtt_ms)
        ...  # send; then stats.on_success(region, wait_ms, service_ms, now) or on_error
        ...  # where wait_ms = observed time - RTT - the worker's reported compute time

``RouteRequest.measured_rtt_ms`` overrides the latency model per region;
``RouteRequest.exclude`` names regions already tried. The simulator drives the
same objects through ``choose_batch``.

Generative requests (a prompt answered by a token stream) are priced per worker across
regions by :class:`KvAwarePolicy` (RTT + wait for a sequence slot + prefill of the
uncached prompt + decode), with prefix affinity under bounded load::

    policy = KvAwarePolicy(GenerativeCosts(max_seqs=16))
    request = GenerativeRequest(model, len(prompt), max_tokens, prefix_key(prompt))
    workers = choose_generative(policy, snapshot, request, rtt_ms_by_region, outstanding)
"""

from router.policies.base import FleetTable, RouteRequest, RoutingPolicy
from router.policies.baselines import NearestPolicy, OraclePolicy, RoundRobinPolicy, WaterfallPolicy
from router.policies.generative import (
    GenerativeCosts,
    GenerativeRequest,
    KvAwarePolicy,
    LeastLoadedGenerative,
    PrefixAffinity,
    RoundRobinGenerative,
    WorkerCandidate,
    prefix_key,
)
from router.policies.meridian import MeridianPolicy, expected_wait_ms
from router.policies.selection import (
    VersionPicker,
    choose_generative,
    choose_worker,
    generative_candidates,
    pick_worker,
    serving_workers,
)
from router.policies.stats import RegionStats, RouterStats, StatsConfig

__all__ = [
    "FleetTable",
    "GenerativeCosts",
    "GenerativeRequest",
    "KvAwarePolicy",
    "LeastLoadedGenerative",
    "MeridianPolicy",
    "NearestPolicy",
    "OraclePolicy",
    "PrefixAffinity",
    "RegionStats",
    "RoundRobinGenerative",
    "RoundRobinPolicy",
    "RouteRequest",
    "RouterStats",
    "RoutingPolicy",
    "StatsConfig",
    "VersionPicker",
    "WaterfallPolicy",
    "WorkerCandidate",
    "choose_generative",
    "choose_worker",
    "expected_wait_ms",
    "generative_candidates",
    "pick_worker",
    "prefix_key",
    "serving_workers",
]
