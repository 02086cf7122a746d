"""Telling the control plane about demand for a model that no worker serves.

When every deployment of a model stands at zero replicas, the router holds the
first requests and calls ``POST /v1/demand/{model}`` on the control plane (with
its read token), naming the deployment region nearest the client, so the
autoscaler starts a worker there. At most one call per model per
``min_interval_s``; calls run as owned tasks and never delay the request.
"""

from __future__ import annotations

import time
from typing import Protocol

from meridian.background import BackgroundTasks
from meridian.snapshot import RoutingSnapshot
from router.latency import great_circle_km
from router.reports import ControlPlaneClient

__all__ = ["DemandNotifier", "DemandSink", "HttpDemandSink", "nearest_deployment_region"]


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
    """``POST /v1/demand/{model}`` through the router's :class:`ControlPlaneClient`."""

    def __init__(self, client: ControlPlaneClient) -> None:
        self._client = client

    async def send(self, model: str, region: str | None) -> None:
        body = {"region": region} if region else None
        await self._client.post(f"/v1/demand/{model}", body, f"demand for {model}")


class DemandNotifier:
    def __init__(self, sink: DemandSink, *, min_interval_s: float = 1.0) -> None:
        self._sink = sink
        self._interval = min_interval_s
        self._last: dict[str, float] = {}
        self._tasks = BackgroundTasks("demand", "reporting demand failed")
        self.sent = 0

    def notify(self, model: str, region: str | None) -> bool:
        """Report demand for ``model`` unless it was reported within the interval."""
        now = time.monotonic()
        if now - self._last.get(model, -1e18) < self._interval:
            return False
        self._last[model] = now
        self.sent += 1
        self._tasks.spawn(self._sink.send(model, region))
        return True

    async def close(self) -> None:
        await self._tasks.close()
        close = getattr(self._sink, "close", None)
        if close is not None:
            await close()
