"""Where the fleet's traffic comes from: client areas and the regions that serve them.

Routers report, every few seconds, how many requests they served per client area
(the client's location rounded to a grid cell) and region, and the mean time to first
token of streamed generations per region (``POST /v1/traffic``). A report is kept in
the coordination backend under ``<namespace>/fleet/traffic/<router>`` with a lease, so
every replica's console sees every router's report, and a router that stops
reporting drops out by itself. :func:`merge_reports` (pure) turns the reports into
client areas with request rates per serving region.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from meridian.coordination import Coordination

__all__ = ["AreaFlow", "ClientArea", "TrafficBoard", "merge_reports"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AreaFlow:
    region: str
    rps: float


@dataclass(frozen=True, slots=True)
class ClientArea:
    lat: float
    lon: float
    rps: float
    flows: tuple[AreaFlow, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "lat": self.lat,
            "lon": self.lon,
            "rps": round(self.rps, 2),
            "flows": [{"region": f.region, "rps": round(f.rps, 2)} for f in self.flows],
        }


@dataclass
class RegionTraffic:
    """What the routers saw of one region: requests/s served, mean TTFT (ms, 0: none)."""

    rps: float = 0.0
    ttft_ms: float = 0.0
    streams: int = 0


@dataclass
class TrafficView:
    areas: tuple[ClientArea, ...] = ()
    regions: dict[str, RegionTraffic] = field(default_factory=dict)
    routers: int = 0


def merge_reports(reports: list[dict[str, Any]], *, now: float, max_age_s: float) -> TrafficView:
    """Every router's latest report (not older than ``max_age_s``) summed per client area
    and region; TTFT is the stream-weighted mean over the routers."""
    areas: dict[tuple[float, float], dict[str, float]] = {}
    regions: dict[str, RegionTraffic] = {}
    ttft_sums: dict[str, float] = {}
    routers = 0
    for report in reports:
        interval = float(report.get("interval_s") or 0.0)
        if interval <= 0 or now - float(report.get("at", 0.0)) > max_age_s:
            continue
        routers += 1
        for flow in report.get("flows", ()):
            rps = float(flow["requests"]) / interval
            key = (round(float(flow["lat"]), 1), round(float(flow["lon"]), 1))
            per_region = areas.setdefault(key, {})
            per_region[flow["region"]] = per_region.get(flow["region"], 0.0) + rps
            regions.setdefault(flow["region"], RegionTraffic()).rps += rps
        for seen in report.get("regions", ()):
            name = seen["region"]
            streams = int(seen.get("streams", 0))
            if streams > 0:
                entry = regions.setdefault(name, RegionTraffic())
                entry.streams += streams
                ttft_sums[name] = ttft_sums.get(name, 0.0) + float(seen["ttft_ms"]) * streams
    for name, total in ttft_sums.items():
        regions[name].ttft_ms = round(total / regions[name].streams, 1)
    merged = tuple(
        ClientArea(
            lat=lat,
            lon=lon,
            rps=sum(per_region.values()),
            flows=tuple(AreaFlow(r, v) for r, v in sorted(per_region.items())),
        )
        for (lat, lon), per_region in sorted(areas.items())
    )
    return TrafficView(merged, regions, routers)


class TrafficBoard:
    """Routers' reports in the coordination backend (each under a lease) and the merged
    view of them that this replica last read."""

    def __init__(
        self, coord: Coordination, *, prefix: str, ttl_s: float = 10.0, refresh_s: float = 1.0
    ) -> None:
        self._coord = coord
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._refresh_s = refresh_s
        self._read_at = -float("inf")
        self.view = TrafficView()

    async def put(self, router: str, report: dict[str, Any]) -> None:
        lease = await self._coord.grant_lease(self._ttl_s)
        body = orjson.dumps({**report, "at": time.time()})
        await self._coord.put(f"{self._prefix}{router}", body, lease=lease)

    async def refresh(self) -> TrafficView:
        """Read the reports again, at most every ``refresh_s`` (routers report every few
        seconds; the console may ask several times a second)."""
        now = time.monotonic()
        if now - self._read_at < self._refresh_s:
            return self.view
        self._read_at = now
        try:
            items, _ = await self._coord.get_prefix(self._prefix)
        except Exception as exc:  # keep the last view while the store is away
            log.warning("reading routers' traffic reports failed: %s", exc)
            return self.view
        reports = []
        for kv in items:
            try:
                reports.append(orjson.loads(kv.value))
            except orjson.JSONDecodeError:
                continue
        try:
            self.view = merge_reports(reports, now=time.time(), max_age_s=self._ttl_s)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring malformed traffic reports: %s", exc)
        return self.view
