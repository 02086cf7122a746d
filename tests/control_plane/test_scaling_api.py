"""Pinning through PATCH, ``GET /v1/deployments/{id}/scaling`` and ``POST /v1/demand/{model}``."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from control_plane.autoscale.controller import Autoscaler, DeploymentTarget
from control_plane.autoscale.policy import AutoscalePolicy, ScalingConfig
from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot
from meridian.waiting import wait_until
from tests.control_plane.conftest import Api


@pytest.fixture
def scaler(api: Api) -> Iterator[Autoscaler]:
    autoscaler = Autoscaler(AutoscalePolicy(ScalingConfig(stable_window_s=20, panic_window_s=4)))
    state = api.client.app.state  # type: ignore[attr-defined]
    fleets = state.autoscaler
    state.autoscaler = autoscaler
    try:
        yield autoscaler
    finally:
        state.autoscaler = fleets


@pytest.fixture
def no_scaler(api: Api) -> Iterator[None]:
    """The admin API without the fleet plane's autoscaler (``fleet_enabled=false``)."""
    state = api.client.app.state  # type: ignore[attr-defined]
    fleets = state.autoscaler
    state.autoscaler = None
    try:
        yield
    finally:
        state.autoscaler = fleets


def deploy(api: Api, **extra: object) -> dict[str, object]:
    model, version = api.deployable()
    region = api.region()["name"]
    body = {"model": model, "version": version, "region": region, **extra}
    created: dict[str, object] = api.ok("POST", "/v1/deployments", 201, json=body)
    return created


def test_pin_and_unpin_a_deployment(api: Api) -> None:
    dep = deploy(api, min_replicas=0, max_replicas=4)
    assert dep["autoscale_pinned"] is False and dep["pinned_replicas"] is None
    url = f"/v1/deployments/{dep['id']}"
    pinned = api.ok("PATCH", url, json={"autoscale_pinned": True, "pinned_replicas": 3},
                    headers=api.headers(**{"If-Match": "*"}))  # fmt: skip
    assert pinned["autoscale_pinned"] is True and pinned["pinned_replicas"] == 3
    audit = api.ok("GET", "/v1/audit", params={"entity": "deployment", "entity_key": dep["id"]})
    assert any(e["detail"].get("autoscale_pinned") is True for e in audit["items"])
    unpinned = api.ok("PATCH", url, json={"autoscale_pinned": False, "pinned_replicas": None},
                      headers=api.headers(**{"If-Match": "*"}))  # fmt: skip
    assert unpinned["autoscale_pinned"] is False and unpinned["pinned_replicas"] is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"autoscale_pinned": True}, "needs pinned_replicas"),
        ({"autoscale_pinned": True, "pinned_replicas": 9}, "must be <= max_replicas"),
    ],
)
def test_bad_pins_are_refused_with_a_reason(
    api: Api, patch: dict[str, object], message: str
) -> None:
    dep = deploy(api, min_replicas=0, max_replicas=4)
    response = api.client.patch(f"/v1/deployments/{dep['id']}", json=patch,
                                headers=api.headers(**{"If-Match": "*"}))  # fmt: skip
    assert response.status_code == 400, response.text
    assert message in response.text


def test_negative_pinned_replicas_is_a_422(api: Api) -> None:
    dep = deploy(api)
    response = api.client.patch(f"/v1/deployments/{dep['id']}", json={"pinned_replicas": -1},
                                headers=api.headers(**{"If-Match": "*"}))  # fmt: skip
    assert response.status_code == 422 and "pinned_replicas" in response.text


def test_scaling_without_an_autoscaler_says_so(api: Api, no_scaler: None) -> None:
    dep = deploy(api, min_replicas=1, max_replicas=2)
    body = api.ok("GET", f"/v1/deployments/{dep['id']}/scaling")
    assert body["autoscaler_running"] is False and body["desired_replicas"] is None
    assert body["min_replicas"] == 1 and body["max_replicas"] == 2
    assert api.client.get("/v1/deployments/999999/scaling", headers=api.admin).status_code == 404


def test_demand_activates_a_deployment_and_scaling_shows_why(api: Api, scaler: Autoscaler) -> None:
    dep = deploy(api, min_replicas=0, max_replicas=3)
    model, region = str(dep["model"]), str(dep["region"])
    target = DeploymentTarget(int(dep["id"]), model, "1", region, 0, 3)  # type: ignore[call-overload]
    snap = RoutingSnapshot(
        version=1, generated_at=0.0,
        regions=(RegionView(region, HealthState.HEALTHY, 0.0, 0.0),),
        deployments=(DeploymentRoute(model, "1", region),),
    )  # fmt: skip
    now = time.monotonic()
    scaler.observe(snap, now)
    assert scaler.decide([target], now) == {target.id: 0}
    reader = api.token("read")
    accepted = api.ok("POST", f"/v1/demand/{model}", 202, json={"region": region},
                      headers=api.headers(reader))  # fmt: skip
    assert accepted == {"model": model, "deployments": 1}
    assert scaler.decide([target], time.monotonic()) == {target.id: 1}
    body = api.ok("GET", f"/v1/deployments/{dep['id']}/scaling", headers=api.headers(reader))
    assert body["autoscaler_running"] is True and body["desired_replicas"] == 1
    assert body["ready_replicas"] == 0
    assert body["last_decision"]["reason"].startswith("activation")
    assert body["decisions"][0]["current"] == 0 and body["decisions"][0]["desired"] == 1


def test_demand_errors(api: Api, scaler: Autoscaler) -> None:
    reader = api.token("read")
    missing = api.client.post("/v1/demand/nobody-deploys-this", headers=api.headers(reader))
    assert missing.status_code == 404 and "not deployed" in missing.text
    anonymous = api.client.post("/v1/demand/x")
    assert anonymous.status_code == 401
    dep = deploy(api)
    bad = api.client.post(f"/v1/demand/{dep['model']}", json={"region": "Not A Region!"},
                          headers=api.headers(reader))  # fmt: skip
    assert bad.status_code == 422 and "region" in bad.text


def test_demand_without_an_autoscaler_is_a_503_with_retry_after(api: Api, no_scaler: None) -> None:
    dep = deploy(api)
    response = api.client.post(f"/v1/demand/{dep['model']}", headers=api.admin)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"


def test_the_fleet_planes_autoscaler_says_whether_it_leads(api: Api) -> None:
    dep = deploy(api, min_replicas=0, max_replicas=2)
    url = f"/v1/deployments/{dep['id']}/scaling"
    wait_until(lambda: api.ok("GET", url)["autoscaler_leading"] is True, timeout=10,
               what="the only replica leads")  # fmt: skip
    assert api.ok("GET", url)["autoscaler_running"] is True
