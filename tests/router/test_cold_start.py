"""Scale to zero at the router: hold, report demand, serve when a worker appears, or 503."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meridian.snapshot import DeploymentRoute, RoutingSnapshot
from meridian.waiting import wait_until_async
from router.demand import DemandNotifier, HttpDemandSink, nearest_deployment_region
from router.policies import NearestPolicy
from router.reports import ControlPlaneClient
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for

EDGE = "x-meridian-client-location"


def cold(snap: RoutingSnapshot, version: int) -> RoutingSnapshot:
    """``snap`` with its deployments kept and every worker gone (scaled to zero)."""
    regions = tuple(dataclasses.replace(r, workers=()) for r in snap.regions)
    return RoutingSnapshot(version, 0.0, regions, snap.deployments)


class ScalingControlPlane:
    """Stands in for the control plane behind the demand seam: records demand and, when
    told to, publishes the snapshot in which the worker is ready."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.asked = asyncio.Event()

    async def send(self, model: str, region: str | None) -> None:
        self.calls.append((model, region))
        self.asked.set()


@pytest.fixture
async def cold_router(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> AsyncIterator[tuple[RouterServer, httpx.AsyncClient, RoutingSnapshot, ScalingControlPlane]]:
    near, far = two_workers
    warm = snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}, version=2)
    warm = RoutingSnapshot(2, 0.0, warm.regions, (DeploymentRoute("mlp", "1", "near"),
                                                  DeploymentRoute("mlp", "1", "far")))  # fmt: skip
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", cold_start_hold_s=5.0,
                              cold_start_retry_after_s=7)  # fmt: skip
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(cold(warm, 1))
    control = ScalingControlPlane()
    server.core.demand = DemandNotifier(control, min_interval_s=60.0)
    port = await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={EDGE: "41,41"})
    try:
        yield server, client, warm, control
    finally:
        await client.aclose()
        await server.stop()


async def test_held_requests_are_served_once_a_worker_is_ready(cold_router) -> None:
    server, client, warm, control = cold_router
    requests = [
        asyncio.create_task(client.post("/v2/models/mlp/infer", content=b"{}")) for _ in range(5)
    ]
    await asyncio.wait_for(control.asked.wait(), 5)
    assert control.calls == [("mlp", "far")]  # once, for the deployment nearest the client
    assert all(not r.done() for r in requests)  # held, not refused
    server.store.offer(warm)  # the control plane started workers
    answers = await asyncio.gather(*requests)
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-meridian-region"] for a in answers} == {"far"}
    assert server.core.counters["cold_start_served"] == 5
    assert server.core.held == 0 and len(server.core.cold_starts_ms) == 5
    ready = (await client.get("/v2/health/ready")).json()
    assert ready["cold_start_last_ms"] is not None and ready["cold_start_held_now"] == 0


async def test_past_the_hold_a_clear_503_with_retry_after(cold_router) -> None:
    server, client, _, control = cold_router
    server.settings.cold_start_hold_s = 0.2
    r = await client.post("/v2/models/mlp/infer", content=b"{}")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "7"
    assert "scaled to zero" in r.json()["error"]
    assert control.calls == [("mlp", "far")]
    assert server.core.counters["cold_start_timeouts"] == 1 and server.core.held == 0


async def test_too_many_held_is_refused_at_once(cold_router) -> None:
    server, client, _, _ = cold_router
    server.settings.cold_start_max_held = 0
    r = await client.post("/v2/models/mlp/infer", content=b"{}")
    assert r.status_code == 503 and r.headers["retry-after"] == "7"
    assert server.core.counters["cold_start_refused"] == 1


async def test_an_unknown_model_is_a_404_without_holding(cold_router) -> None:
    server, client, _, control = cold_router
    r = await client.post("/v2/models/nobody/infer", content=b"{}")
    assert r.status_code == 404 and not control.calls and server.core.held == 0


def test_nearest_deployment_region_ignores_other_models_and_down_regions() -> None:
    w = StandInWorker("x")
    snap = snapshot_for({"a": (w, 0.0, 0.0), "b": (w, 30.0, 30.0), "c": (w, 31.0, 31.0)})
    regions = tuple(
        dataclasses.replace(r, state=r.state.DOWN) if r.name == "c" else r for r in snap.regions
    )
    deps = (DeploymentRoute("m", "1", "a"), DeploymentRoute("m", "1", "c"),
            DeploymentRoute("other", "1", "b"))  # fmt: skip
    snap = RoutingSnapshot(1, 0.0, regions, deps)
    assert nearest_deployment_region(snap, "m", 31.0, 31.0) == "a"
    assert nearest_deployment_region(snap, "none", 0.0, 0.0) is None
    assert nearest_deployment_region(None, "m", 0.0, 0.0) is None


async def test_http_demand_sink_posts_with_the_token_and_fails_over() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "cp1":
            return httpx.Response(503)
        return httpx.Response(202, json={"model": "mlp", "deployments": 1})

    client = ControlPlaneClient(
        ["http://cp1/", "http://cp2"], "tok", transport=httpx.MockTransport(handler)
    )
    try:
        await HttpDemandSink(client).send("mlp", "eu-west-1")
    finally:
        await client.close()
    assert [str(r.url) for r in seen] == ["http://cp1/v1/demand/mlp", "http://cp2/v1/demand/mlp"]
    assert seen[1].headers["authorization"] == "Bearer tok"
    assert json.loads(seen[1].content) == {"region": "eu-west-1"}


async def test_notifier_reports_a_model_once_per_interval() -> None:
    control = ScalingControlPlane()
    notifier = DemandNotifier(control, min_interval_s=60.0)
    assert notifier.notify("a", None) and not notifier.notify("a", None)
    assert notifier.notify("b", "r")
    await wait_until_async(lambda: len(control.calls) == 2, timeout=5, what="both reports")
    await notifier.close()
    assert sorted(control.calls, key=str) == [("a", None), ("b", "r")] and notifier.sent == 2
