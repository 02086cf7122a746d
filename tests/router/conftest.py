"""Router test helpers: stand-in workers built on the router's own HTTP server."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.http11 import HttpServer, Request, Response


@dataclass
class StandInWorker:
    """Answers OIP-shaped requests; ``status`` can be switched to simulate a broken worker,
    ``delay_s`` a slow one (a gray failure: it answers, late)."""

    name: str
    status: int = 200
    delay_s: float = 0.0
    seen: list[Request] = field(default_factory=list)
    server: HttpServer | None = None
    port: int = 0
    # TLS with a fleet client certificate required (worker.access.server_context); None: plain
    tls: ssl.SSLContext | None = None

    async def handle(self, req: Request) -> Response:
        self.seen.append(req)
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        body = b'{"model_name":"mlp","outputs":[],"served_by":"' + self.name.encode() + b'"}'
        return Response(self.status, body, [(b"content-type", b"application/json")])

    async def start(self) -> None:
        """Listen on a free port, or on the port it had before (a restarted worker)."""
        self.server = HttpServer(self.handle)
        self.port = await self.server.start("127.0.0.1", self.port, ssl_context=self.tls)

    async def stop(self) -> None:
        assert self.server is not None
        await self.server.stop()

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


def snapshot_for(
    workers: dict[str, tuple[StandInWorker, float, float]], version: int = 1
) -> RoutingSnapshot:
    regions = tuple(
        RegionView(
            name=name,
            state=HealthState.HEALTHY,
            lat=lat,
            lon=lon,
            capacity_rps=100.0,
            workers=(WorkerView(f"{name}-w1", w.endpoint, HealthState.HEALTHY, ("mlp:1",)),),
        )
        for name, (w, lat, lon) in workers.items()
    )
    return RoutingSnapshot(version=version, generated_at=time.time(), regions=regions)


@pytest.fixture
async def two_workers() -> AsyncIterator[tuple[StandInWorker, StandInWorker]]:
    near, far = StandInWorker("near"), StandInWorker("far")
    await near.start()
    await far.start()
    try:
        yield near, far
    finally:
        for w in (near, far):
            await w.stop()
