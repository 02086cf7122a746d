"""Mirrored requests: a share of the old version's requests also sent to the new one.

While a rollout compares outputs, the snapshot marks the new version's deployment in a
region with ``mirror`` (the share of the other versions' answered requests to copy) and
``compare`` (``cosine`` for embeddings, ``disagreement`` for classifiers). After the old
version answered, :class:`Mirrors` sends the same request to a worker of the new version
in that region as an owned background task, compares the two replies and counts the
distance in the new version's figures; the mirror's reply is discarded and the user's
request never waits for it. At most ``max_in_flight`` mirrors run at once (others are
skipped, not queued).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from meridian.background import BackgroundTasks
from meridian.snapshot import DeploymentRoute, RegionView, RoutingSnapshot, WorkerView
from router.figures import FigureBook
from router.policies import choose_worker, serving_workers
from router.upstream import UpstreamError, UpstreamPool

__all__ = ["Mirrors", "output_distance"]

log = logging.getLogger(__name__)


def _first_output(body: bytes) -> list[Any] | None:
    try:
        data = orjson.loads(body)
        outputs = data["outputs"]
        values = outputs[0]["data"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return values if isinstance(values, list) else None


def _floats(values: Sequence[Any]) -> list[float] | None:
    flat: list[float] = []
    for v in values:
        if isinstance(v, list):
            inner = _floats(v)
            if inner is None:
                return None
            flat.extend(inner)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            flat.append(float(v))
        else:
            return None
    return flat


def output_distance(kind: str, old: bytes, new: bytes) -> float | None:
    """How far the new reply is from the old one: ``cosine`` distance (0 same direction,
    1 orthogonal, 2 opposite) of the first output's values, or ``disagreement`` (0 the
    same label or argmax, 1 not). None when the replies cannot be compared."""
    a, b = _first_output(old), _first_output(new)
    if a is None or b is None:
        return None
    if kind == "disagreement":
        fa, fb = _floats(a), _floats(b)
        if fa is not None and fb is not None and fa and fb:
            return 0.0 if fa.index(max(fa)) == fb.index(max(fb)) else 1.0
        return 0.0 if a == b else 1.0
    fa, fb = _floats(a), _floats(b)
    if fa is None or fb is None or len(fa) != len(fb) or not fa:
        return None
    dot = sum(x * y for x, y in zip(fa, fb, strict=True))
    na = math.sqrt(sum(x * x for x in fa))
    nb = math.sqrt(sum(y * y for y in fb))
    if na == 0.0 or nb == 0.0:
        return 0.0 if na == nb else 1.0
    return 1.0 - dot / (na * nb)


class Mirrors:
    def __init__(
        self,
        pool: UpstreamPool,
        book: FigureBook,
        endpoint: Callable[[str], tuple[str, int]],
        rng: random.Random,
        *,
        timeout_s: float = 5.0,
        max_in_flight: int = 64,
    ) -> None:
        self._pool = pool
        self._book = book
        self._endpoint = endpoint
        self._rng = rng
        self._timeout = timeout_s
        self._max = max_in_flight
        self._tasks = BackgroundTasks("mirror", "a mirrored request failed")
        self._routes: tuple[RoutingSnapshot | None, dict[tuple[str, str], DeploymentRoute]] = (
            None,
            {},
        )
        self.sent = 0
        self.skipped = 0

    def _mirror_routes(self, snap: RoutingSnapshot) -> dict[tuple[str, str], DeploymentRoute]:
        cached, routes = self._routes
        if cached is not snap:
            routes = {(d.model, d.region): d for d in snap.deployments if d.mirror > 0}
            self._routes = (snap, routes)
        return routes

    def after_answer(
        self,
        snap: RoutingSnapshot,
        region: RegionView,
        model: str,
        version: str,
        method: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        answer: bytes,
    ) -> None:
        """``version`` answered a request in ``region``: mirror it when a rollout asks."""
        route = self._mirror_routes(snap).get((model, region.name))
        if route is None or route.version == version or self._rng.random() >= route.mirror:
            return
        if len(self._tasks) >= self._max:
            self.skipped += 1
            return
        workers = serving_workers(region, model, route.version)
        worker = choose_worker(workers, self._rng)
        if worker is None:
            return
        path = f"/v2/models/{model}/versions/{route.version}/infer" + query
        self.sent += 1
        self._tasks.spawn(
            self._mirror(route, region.name, worker, method, path, headers, body, answer)
        )

    async def _mirror(
        self,
        route: DeploymentRoute,
        region: str,
        worker: WorkerView,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        answer: bytes,
    ) -> None:
        figures = self._book.of(route.model, route.version, region)
        host, port = self._endpoint(worker.endpoint)
        try:
            reply = await self._pool.request(host, port, method, path, headers, body, self._timeout)
        except (UpstreamError, TimeoutError, OSError):
            figures.compared(None)
            return
        if reply.status != 200:
            figures.compared(None)
            return
        distance = output_distance(route.compare or "cosine", answer, reply.body)
        figures.compared(distance)

    async def close(self) -> None:
        await self._tasks.close()
