"""Clients in world cities sending text to the router, and what they saw."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import numpy as np

from demo.geography import City

__all__ = ["CityStats", "Traffic"]

SENTENCES = (
    "Where is the nearest train station?",
    "The model answers from the region closest to you.",
    "Inference requests fail over when a region breaks.",
    "A quick brown fox jumps over the lazy dog.",
    "Batching requests makes the accelerator busy and efficient.",
    "How warm will it be in Sao Paulo tomorrow?",
    "Ich hätte gern einen Kaffee, bitte.",
    "Latency is network distance plus queueing plus service time.",
)


@dataclass
class CityStats:
    latencies_ms: list[float] = field(default_factory=list)
    regions: Counter[str] = field(default_factory=Counter)
    recent_regions: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retried: int = 0
    last_error: str = ""

    def summary(self) -> dict[str, object]:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        return {
            "requests": len(self.latencies_ms) + self.errors,
            "errors": self.errors,
            "retried": self.retried,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "regions": dict(self.regions.most_common()),
            "last_error": self.last_error,
        }


class Traffic:
    """One task per city, each sending ``rate`` requests/s (Poisson) to the router."""

    def __init__(
        self,
        router_url: str,
        cities: Sequence[City],
        rate: float,
        model: str,
        ca_file: str | None,
        seed: int = 1,
        api_key: str | None = None,
    ) -> None:
        self.router_url = router_url
        self.cities = cities
        self.rate = rate
        self.model = model
        self.stats: dict[str, CityStats] = defaultdict(CityStats)
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else False
        )
        self._client = httpx.AsyncClient(
            base_url=router_url,
            headers={"x-api-key": api_key} if api_key else None,
            verify=verify,
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=100),
        )
        self._rng = random.Random(seed)
        self._inflight: set[asyncio.Task[None]] = set()

    async def _one(self, city: City) -> None:
        text = self._rng.choice(SENTENCES)
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        stats = self.stats[city.name]
        started = time.monotonic()
        try:
            r = await self._client.post(
                f"/v2/models/{self.model}/infer",
                json=body,
                headers={"x-meridian-client-location": f"{city.lat},{city.lon}"},
            )
        except httpx.HTTPError as exc:
            stats.errors += 1
            stats.last_error = repr(exc)
            return
        elapsed = (time.monotonic() - started) * 1000.0
        if r.status_code != 200:
            stats.errors += 1
            stats.last_error = f"{r.status_code}: {r.text[:200]}"
            return
        region = r.headers.get("x-meridian-region", "?")
        stats.latencies_ms.append(elapsed)
        stats.regions[region] += 1
        stats.recent_regions[region] += 1
        if r.headers.get("x-meridian-attempts", "1") != "1":
            stats.retried += 1

    async def _city_loop(self, city: City, until: float) -> None:
        while time.monotonic() < until:
            await asyncio.sleep(self._rng.expovariate(self.rate))
            task = asyncio.create_task(self._one(city))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        await asyncio.gather(*(self._city_loop(c, until) for c in self.cities))
        if self._inflight:  # every request sent is answered or counted as an error
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def take_recent(self) -> dict[str, str]:
        """Most-used region per city since the last call."""
        out = {}
        for name, s in self.stats.items():
            top = s.recent_regions.most_common(1)
            out[name] = top[0][0] if top else "-"
            s.recent_regions.clear()
        return out

    async def close(self) -> None:
        await self._client.aclose()
