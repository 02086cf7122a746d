"""A snapshot that takes a whole model out of routing, through the router on real sockets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import httpx

from meridian.snapshot import DeploymentRoute, HealthState
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for


async def test_the_router_keeps_its_last_good_view_of_a_model_and_says_so(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> None:
    near, far = two_workers
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "s.json"), NearestPolicy()
    )
    good = snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}, version=1)
    deployments = tuple(DeploymentRoute("mlp", "1", r.name) for r in good.regions)
    good = replace(good, deployments=deployments)
    server.store.offer(good)
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.post("/v2/models/mlp/infer", content=b"{}")).status_code == 200
            # a control plane back before its agents: every region down, no workers
            down = tuple(replace(r, state=HealthState.DOWN, workers=()) for r in good.regions)
            server.store.offer(replace(good, version=2, regions=down))
            r = await c.post("/v2/models/mlp/infer", content=b"{}")
            assert r.status_code == 200, r.text
            ready = (await c.get("/v2/health/ready")).json()
            assert ready["models_on_last_good_snapshot"] == ["mlp"]
            metrics = (await c.get("/metrics")).text
            assert "meridian_router_models_on_last_good_snapshot 1.0" in metrics
            assert "meridian_router_snapshot_panics_total 1.0" in metrics
            # the agents are back: the new snapshot is believed again
            server.store.offer(replace(good, version=3))
            assert (await c.post("/v2/models/mlp/infer", content=b"{}")).status_code == 200
            metrics = (await c.get("/metrics")).text
            assert "meridian_router_models_on_last_good_snapshot 0.0" in metrics
    finally:
        await server.stop()
