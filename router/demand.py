"""Telling the control plane about demand for a model that no worker serves.

When every deployment of a model stands at zero replicas, the router holds the
first requests and calls ``POST /v1/demand/{model}`` on the control plane (with
its read token), naming the deployment region nearest the client, so the
autoscaler starts a worker there. At most one call per model per
``min_interval_s``; calls run as owned tasks and never delay the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol

import httpx

from meridian.snapshot import RoutingSnapshot
from router.latency import great_circle_km

__all__ = ["DemandNotifier", "DemandSink", "HttpDemandSink", "nearest_deployment_region"]

log = logging.getLogger(__name__)


class DemandSink(Protocol):
    async def send(self, model: str, region: str | None) -> None: ...


def nearest_deployment_region(
    snap: RoutingSnapshot | None, model: str, lat: float, lon: float
) -> str | None:
    """The region of ``model``'s deployments nearest the client (ignoring down regions)."""
    if snap is None:
        return None
    best: tuple[float, str] | None = None
    for d in snap.deployments:
        region = snap.region(d.region)
        if d.model != model or region is None or not region.state.routable:
            continue
        km = great_circle_km(lat, lon, region.lat, region.lon)
        if best is None or km < best[0]:
            best = (km, region.name)
    return best[1] if best else None


class HttpDemandSink:
    """``POST {base}/v1/demand/{model}`` to the first control plane that answers."""

    def __init__(
        self,
        base_urls: list[str],
        token: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._urls = [u.rstrip("/") for u in base_urls]
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(2.0, connect=1.0),
            transport=transport,
        )

    async def send(self, model: str, region: str | None) -> None:
        body = {"region": region} if region else None
        last: Exception | None = None
        for url in self._urls:
            try:
                response = await self._client.post(f"{url}/v1/demand/{model}", json=body)
            except httpx.HTTPError as exc:
                last = exc
                continue
            if response.status_code < 500:
                if response.status_code >= 400:
                    log.warning("demand for %s refused: %s", model, response.text[:200])
                return
            last = RuntimeError(f"{url} answered {response.status_code}")
        if last is not None:
            log.warning("could not report demand for %s: %s", model, last)

    async def close(self) -> None:
        await self._client.aclose()


class DemandNotifier:
    def __init__(self, sink: DemandSink, *, min_interval_s: float = 1.0) -> None:
        self._sink = sink
        self._interval = min_interval_s
        self._last: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0

    def notify(self, model: str, region: str | None) -> bool:
        """Report demand for ``model`` unless it was reported within the interval."""
        now = time.monotonic()
        if now - self._last.get(model, -1e18) < self._interval:
            return False
        self._last[model] = now
        self.sent += 1
        self._spawn(self._sink.send(model, region))
        return True

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="demand")
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("reporting demand failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        close = getattr(self._sink, "close", None)
        if close is not None:
            await close()
