"""Telling the control plane where this router's traffic comes from and goes, for the
operator console's map.

The hot path counts each served request by client area (the client's location rounded
to a ``cell_deg`` grid cell) and region: one dict increment. Every ``interval_s`` an
owned task sends the counts, and each region's mean time to first token over the
interval (from the router's own TTFT histogram), to ``POST /v1/traffic`` on the first
control plane that answers, with the router's read token. Failures are logged and the
interval's counts dropped: the map is a view, not an account.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from router.reports import ControlPlaneClient

__all__ = ["HttpTrafficSink", "TrafficReporter", "TrafficSink", "default_router_id"]

log = logging.getLogger(__name__)

REGION_HEADER = b"x-meridian-region"  # set on every answer a region served


class TrafficSink(Protocol):
    async def send(self, report: dict[str, Any]) -> None: ...


def default_router_id(port: int) -> str:
    return f"{socket.gethostname()}-{port or os.getpid()}"


class HttpTrafficSink:
    """``POST /v1/traffic`` through the router's :class:`ControlPlaneClient`."""

    def __init__(self, client: ControlPlaneClient) -> None:
        self._client = client

    async def send(self, report: dict[str, Any]) -> None:
        await self._client.post("/v1/traffic", report, "the traffic report")


class TrafficReporter:
    def __init__(
        self,
        sink: TrafficSink,
        router_id: str,
        *,
        interval_s: float = 2.0,
        cell_deg: float = 0.5,
        ttft: Any = None,
        brownout: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        """``ttft``: the router's TTFT histogram (``router.metrics.Histogram``), whose
        per-region sums and counts give each interval's mean; ``brownout``: the regions
        that entered or left brownout since the last call (the control plane audits them)."""
        self._sink = sink
        self.router_id = router_id
        self.interval_s = interval_s
        self._cell = cell_deg
        self._ttft = ttft
        self._counts: dict[tuple[float, float, str], int] = {}
        self._ttft_seen: dict[str, tuple[int, float]] = {}
        self._brownout = brownout
        self.sent = 0

    def note(self, lat: float, lon: float, region: str) -> None:
        """One request from a client at (lat, lon) was served by ``region``."""
        cell = self._cell
        key = (round(lat / cell) * cell, round(lon / cell) * cell, region)
        self._counts[key] = self._counts.get(key, 0) + 1

    def note_answer(self, lat: float, lon: float, headers: list[tuple[bytes, bytes]]) -> None:
        """A request answered with ``headers``, which name the region that served it."""
        for key, value in reversed(headers):
            if key == REGION_HEADER:
                self.note(lat, lon, value.decode("ascii", "replace"))
                return

    def _streams(self) -> list[dict[str, Any]]:
        if self._ttft is None:
            return []
        out: list[dict[str, Any]] = []
        counts: Mapping[str, list[int]] = self._ttft.counts
        for region, buckets in counts.items():
            n, total = sum(buckets), float(self._ttft.sums[region])
            n0, total0 = self._ttft_seen.get(region, (0, 0.0))
            self._ttft_seen[region] = (n, total)
            if n > n0:
                mean_ms = (total - total0) / (n - n0) * 1000
                out.append({"region": region, "streams": n - n0, "ttft_ms": round(mean_ms, 2)})
        return out

    def take(self) -> dict[str, Any]:
        """The report of the interval that just ended (and a fresh one begins)."""
        counts, self._counts = self._counts, {}
        return {
            "router": self.router_id,
            "interval_s": self.interval_s,
            "flows": [
                {"lat": round(lat, 4), "lon": round(lon, 4), "region": region, "requests": n}
                for (lat, lon, region), n in counts.items()
            ],
            "regions": self._streams(),
            "brownout": self._brownout() if self._brownout is not None else [],
        }

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            report = self.take()
            if not report["flows"] and not report["regions"] and not report["brownout"]:
                continue
            try:
                await self._sink.send(report)
                self.sent += 1
            except Exception as exc:
                log.warning("sending the traffic report failed: %s", exc)

    async def close(self) -> None:
        close = getattr(self._sink, "close", None)
        if close is not None:
            await close()
