"""``meridian status`` against a real control plane process, with a read token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from meridian.cli import main
from meridian.waiting import wait_until, wait_until_async
from tests.fleet_support import start_agent

from .conftest import ControlPlane, unique


def _read_token(cp: ControlPlane) -> str:
    created = cp.ok("POST", "/v1/tokens", 201, json={"name": unique("viewer"), "scopes": ["read"]})
    token: str = created["token"]
    return token


def _status(cp: ControlPlane, token: str, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    assert main(["status", "--control-plane", cp.url, "--token", token, *extra]) == 0
    return capsys.readouterr().out


def test_status_shows_regions_health_deployments_and_traffic(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cp, model = control_plane, unique("mlp")
    east, west = unique("use1"), unique("usw2")
    for name, lat, lon in ((east, 38.9, -77.4), (west, 45.6, -121.2)):
        region = {"name": name, "lat": lat, "lon": lon, "provider": "aws", "gpu_type": "L4"}
        cp.ok("POST", "/v1/regions", 201, json=region | {"gpu_count": 4})
    cp.model_version(model)
    for name, weight in ((east, 3.0), (west, 1.0)):
        deployment = {"model": model, "version": "1", "region": name, "traffic_weight": weight}
        cp.ok("POST", "/v1/deployments", 201, json=deployment)

    def published() -> bool:
        names = {r["name"] for r in cp.ok("GET", "/v1/routing/snapshot")["regions"]}
        return {east, west} <= names

    wait_until(published, timeout=15, interval=0.1, what="regions in the routing snapshot")
    token = _read_token(cp)

    status = json.loads(_status(cp, token, capsys, "--output", "json"))
    assert status["control_plane"] == cp.url
    assert status["snapshot"]["version"] >= 1 and 0 <= status["snapshot"]["age_s"] < 60
    regions = {r["name"]: r for r in status["regions"]}
    assert regions[east]["provider"] == "aws" and regions[east]["status"] == "active"
    assert (regions[east]["gpus"], regions[east]["gpu_type"]) == (4, "L4")
    # no agent reports on these regions: down, and the status says why
    assert regions[east]["state"] == "down" and not regions[east]["agent_connected"]
    assert regions[east]["reason"] == "no agent is connected"
    assert (regions[west]["workers"], regions[west]["ready_workers"]) == (0, 0)
    traffic = {t["region"]: t for t in status["traffic"]}
    assert traffic[east] == {
        "region": east, "throughput_rps": 0.0, "in_flight": 0, "queue_depth": 0,
        "capacity_rps": 0.0, "share": traffic[east]["share"],
    }  # fmt: skip
    mine = [d for d in status["deployments"] if d["model"] == model]
    assert [(d["region"], d["traffic_weight"], d["traffic_share"]) for d in mine] == [
        (east, 3.0, 0.75),
        (west, 1.0, 0.25),
    ]
    assert not any(d["serving"] for d in mine)  # no worker serves it anywhere

    monkeypatch.setenv("COLUMNS", "250")  # rich sizes tables to the terminal
    table = _status(cp, token, capsys)
    assert "Regions" in table and "Traffic" in table and "Deployments" in table
    east_row = next(line for line in table.splitlines() if east in line and "aws" in line)
    assert "active" in east_row and "down" in east_row and "0/4 L4" in east_row
    assert "not connected" in east_row
    deployment_row = next(line for line in table.splitlines() if f"{model}:1" in line)
    assert east in deployment_row and "75%" in deployment_row


def test_status_errors_are_explicit(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cp = control_plane
    for env in ("MERIDIAN_READ_TOKEN", "MERIDIAN_ADMIN_TOKEN", "MERIDIAN_CONTROL_PLANE"):
        monkeypatch.delenv(env, raising=False)
    assert main(["status", "--control-plane", cp.url]) == 2
    assert "a read token is needed" in capsys.readouterr().err
    assert main(["status", "--token", "x"]) == 2
    assert "control plane's URL is needed" in capsys.readouterr().err
    assert main(["status", "--control-plane", cp.url, "--token", "not-a-token"]) == 1
    assert "401 (check the token)" in capsys.readouterr().err
    # the token from the environment; a control plane that is not there
    monkeypatch.setenv("MERIDIAN_READ_TOKEN", _read_token(cp))
    monkeypatch.setenv("MERIDIAN_CONTROL_PLANE", cp.url)
    assert main(["status", "--output", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["control_plane"] == cp.url
    assert main(["status", "--control-plane", "http://127.0.0.1:9"]) == 1
    assert "cannot reach the control plane" in capsys.readouterr().err


async def test_status_shows_an_agent_s_region_serving(
    control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """A region agent (simulated GPUs, workers as the test says) reports: the region is
    healthy, its GPUs and workers show, and its traffic and deployment are live."""
    cp, model, name = control_plane, unique("emb"), unique("euw1")
    region = {"name": name, "lat": 53.3, "lon": -6.3, "gpu_type": "H100", "gpu_count": 2}
    credential = cp.ok("POST", "/v1/regions", 201, json=region)["agent_credential"]
    cp.model_version(model)
    cp.ok("POST", "/v1/deployments", 201, json={"model": model, "version": "1", "region": name})
    agent = start_agent([cp.grpc], name, gpus=2, credential=credential)
    agent.supervisor.models = (f"{model}:1",)
    token = _read_token(cp)
    try:

        def healthy() -> bool:
            snapshot = cp.ok("GET", "/v1/routing/snapshot")
            view = next((r for r in snapshot["regions"] if r["name"] == name), None)
            return view is not None and view["state"] == "healthy" and len(view["workers"]) == 2

        await wait_until_async(healthy, timeout=20, what=f"{name} healthy in the snapshot")
        out = await asyncio.to_thread(_status, cp, token, capsys, "--output", "json")
    finally:
        await agent.stop()
    status = json.loads(out)
    mine = next(r for r in status["regions"] if r["name"] == name)
    assert mine["state"] == "healthy" and mine["agent_connected"]
    assert 0 <= mine["last_report_age_s"] < 10
    assert (mine["healthy_gpus"], mine["gpus"], mine["ready_workers"]) == (2, 2, 2)
    traffic = next(t for t in status["traffic"] if t["region"] == name)
    assert traffic["throughput_rps"] == 20.0  # two workers at 10 req/s each
    assert traffic["queue_depth"] == 1 and traffic["capacity_rps"] > 0
    (deployment,) = [d for d in status["deployments"] if d["model"] == model]
    assert deployment["serving"] and deployment["traffic_share"] == 1.0
