"""Choices inside a region: which worker (power of two choices) and which model version
(deployment traffic weights, for canaries)."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Mapping, Sequence

from meridian.snapshot import DeploymentRoute, RegionView, RoutingSnapshot, WorkerView
from router.policies.generative import GenerativeRequest, KvAwarePolicy, WorkerCandidate

__all__ = [
    "VersionPicker",
    "choose_generative",
    "choose_worker",
    "generative_candidates",
    "pick_worker",
    "serving_workers",
]


def _serves(worker: WorkerView, model: str) -> bool:
    prefix = model + ":"
    # "name:version:variant" is a brownout reserve (router.brownout): overflow only
    return any(m == model or (m.startswith(prefix) and m.count(":") == 1) for m in worker.models)


def serving_workers(
    region: RegionView, model: str, version: str | None = None
) -> tuple[WorkerView, ...]:
    """The routable workers of ``region`` that have ``model`` loaded: any version of it, or
    ``version`` when given (its brownout reserves apart)."""
    if version:
        key = f"{model}:{version}"
        return tuple(w for w in region.workers if w.state.routable and key in w.models)
    return tuple(w for w in region.workers if w.state.routable and _serves(w, model))


def choose_worker(
    workers: Sequence[WorkerView],
    rng: random.Random,
    outstanding: Mapping[str, int] | None = None,
) -> WorkerView | None:
    """Two random ones of ``workers`` (see :func:`serving_workers`); the one with the
    shorter queue wins.

    Load is the worker's reported queue depth + in-flight, plus what this router has
    outstanding on it (``outstanding`` by worker id) since the report.
    """
    if not workers:
        return None
    if len(workers) == 1:
        return workers[0]
    a, b = rng.sample(workers, 2)
    extra = outstanding or {}

    def load(w: WorkerView) -> int:
        return w.queue_depth + w.in_flight + extra.get(w.worker_id, 0)

    return b if load(b) < load(a) else a


def pick_worker(
    region: RegionView,
    model: str,
    rng: random.Random,
    outstanding: Mapping[str, int] | None = None,
) -> WorkerView | None:
    """Power of two choices among the region's workers serving ``model``
    (:func:`choose_worker` over :func:`serving_workers`)."""
    return choose_worker(serving_workers(region, model), rng, outstanding)


class VersionPicker:
    """Picks a model version in a region by the deployments' traffic weights.

    Built once per snapshot: cumulative weights per (model, region).
    """

    def __init__(self, snapshot: RoutingSnapshot) -> None:
        self._routes: dict[tuple[str, str], tuple[list[DeploymentRoute], list[float]]] = {}
        groups: dict[tuple[str, str], list[DeploymentRoute]] = {}
        for d in snapshot.deployments:
            if d.weight > 0:
                groups.setdefault((d.model, d.region), []).append(d)
        for key, routes in groups.items():
            self._routes[key] = (routes, list(itertools.accumulate(r.weight for r in routes)))

    def pick(self, model: str, region: str, rng: random.Random) -> DeploymentRoute | None:
        entry = self._routes.get((model, region))
        if entry is None:
            return None
        routes, cumulative = entry
        x = rng.random() * cumulative[-1]
        return routes[min(bisect.bisect_right(cumulative, x), len(routes) - 1)]


def generative_candidates(
    snapshot: RoutingSnapshot,
    model: str,
    rtt_ms: Mapping[str, float],
    outstanding: Mapping[str, int] | None = None,
    exclude: Sequence[str] = (),
) -> list[WorkerCandidate]:
    """Every routable worker serving ``model`` in a routable region with a known RTT, as
    the plain data :class:`~router.policies.generative.KvAwarePolicy` prices."""
    extra = outstanding or {}
    out: list[WorkerCandidate] = []
    for region in snapshot.routable_regions():
        rtt = rtt_ms.get(region.name)
        if rtt is None or region.name in exclude:
            continue
        for w in serving_workers(region, model):
            out.append(
                WorkerCandidate(
                    region=region.name,
                    worker_id=w.worker_id,
                    rtt_ms=rtt,
                    running=w.running_seqs,
                    waiting=w.waiting_seqs,
                    outstanding=extra.get(w.worker_id, 0),
                    kv_blocks_free=w.kv_blocks_free,
                    kv_blocks_used=w.kv_blocks_used,
                )
            )
    return out


def choose_generative(
    policy: KvAwarePolicy,
    snapshot: RoutingSnapshot,
    request: GenerativeRequest,
    rtt_ms: Mapping[str, float],
    outstanding: Mapping[str, int] | None = None,
    exclude: Sequence[str] = (),
) -> list[WorkerView]:
    """Workers for a generative request, best first (retries go down the list); the
    first is recorded in the policy's affinity table as where the prefix now lives."""
    candidates = generative_candidates(snapshot, request.model, rtt_ms, outstanding, exclude)
    ranked = policy.rank(request, candidates)
    if not ranked:
        return []
    policy.record(request, ranked[0].worker_id)
    views: dict[str, WorkerView] = {}
    for region in snapshot.regions:
        for w in region.workers:
            views[w.worker_id] = w
    return [views[c.worker_id] for c in ranked]
