"""Regions, agent credentials and deployments over REST."""

from __future__ import annotations

import pytest

from meridian.errors import PermissionDenied, Unauthenticated
from tests.control_plane.conftest import Api, unique


def test_region_lifecycle_and_filters(api: Api) -> None:
    created = api.region(provider="gcp", gpu_count=8)
    name = created["name"]
    assert created["agent_credential"].startswith("mrd_agent_")
    got = api.client.get(f"/v1/regions/{name}", headers=api.admin)
    assert got.headers["ETag"] == '"1"' and "agent_credential" not in got.json()
    assert "agent_credential_hash" not in got.json()

    r = api.client.patch(
        f"/v1/regions/{name}",
        json={"status": "draining", "gpu_count": 4},
        headers=api.headers(**{"If-Match": '"1"'}),
    )
    assert r.status_code == 200 and r.json()["status"] == "draining" and r.json()["gpu_count"] == 4
    draining = api.ok("GET", "/v1/regions?status=draining&limit=500")["items"]
    assert name in {x["name"] for x in draining}
    assert name not in {
        x["name"] for x in api.ok("GET", "/v1/regions?status=active&limit=500")["items"]
    }
    assert api.client.get("/v1/regions?status=melting", headers=api.admin).status_code == 422

    r = api.client.post("/v1/regions", json={"name": name, "lat": 0, "lon": 0}, headers=api.admin)
    assert r.status_code == 409
    r = api.client.post(
        "/v1/regions", json={"name": unique("r"), "lat": 91, "lon": 0}, headers=api.admin
    )
    assert r.status_code == 422 and "lat" in r.json()["detail"]
    nan = '{"name": "nan-region", "lat": NaN, "lon": 0}'
    headers = api.headers(**{"Content-Type": "application/json"})
    r = api.client.post("/v1/regions", content=nan, headers=headers)
    assert r.status_code == 422 and "lat" in r.json()["detail"]
    assert (
        api.client.delete(
            f"/v1/regions/{name}", headers=api.headers(**{"If-Match": '"2"'})
        ).status_code
        == 204
    )
    assert api.client.get(f"/v1/regions/{name}", headers=api.admin).status_code == 404


def test_agent_credentials_authenticate_rotate_and_disable(api: Api) -> None:
    created = api.region()
    name, old = created["name"], created["agent_credential"]
    assert api.registry.authenticate_agent(old).name == name
    with pytest.raises(Unauthenticated):
        api.registry.authenticate_agent("mrd_agent_unknown")

    rotated = api.ok("POST", f"/v1/regions/{name}/credential")
    new = rotated["agent_credential"]
    assert new != old
    with pytest.raises(Unauthenticated):
        api.registry.authenticate_agent(old)
    assert api.registry.authenticate_agent(new).name == name

    # the credential is also a bearer token with the agent scope: catalog reads only
    model, _ = api.deployable()
    as_agent = api.headers(new)
    assert (
        api.client.get(f"/v1/models/{model}/versions/1/artifact", headers=as_agent).status_code
        == 200
    )
    assert api.client.get(f"/v1/models/{model}", headers=as_agent).status_code == 200
    assert api.client.get("/v1/regions", headers=as_agent).status_code == 403
    assert (
        api.client.post("/v1/models", json={"name": unique("m")}, headers=as_agent).status_code
        == 403
    )
    assert api.client.get("/v1/models", headers=api.headers(old)).status_code == 401

    api.ok(
        "PATCH",
        f"/v1/regions/{name}",
        json={"status": "disabled"},
        headers=api.headers(**{"If-Match": "*"}),
    )
    with pytest.raises(PermissionDenied):
        api.registry.authenticate_agent(new)
    assert api.client.get(f"/v1/models/{model}", headers=as_agent).status_code == 401


def test_deployment_rules(api: Api) -> None:
    model, version = api.deployable()
    region = api.region()["name"]

    undeployable = api.model()
    api.version(undeployable)
    r = api.client.post(
        "/v1/deployments",
        json={"model": undeployable, "version": "1", "region": region},
        headers=api.admin,
    )
    assert r.status_code == 409 and "artifact" in r.json()["detail"]

    body = {
        "model": model,
        "version": version,
        "region": region,
        "min_replicas": 1,
        "max_replicas": 3,
        "traffic_weight": 0.9,
    }
    created = api.client.post("/v1/deployments", json=body, headers=api.admin)
    assert created.status_code == 201 and created.headers["ETag"] == '"1"'
    dep = created.json()
    assert (dep["model"], dep["region"], dep["max_replicas"]) == (model, region, 3)

    dup = api.client.post("/v1/deployments", json=body, headers=api.admin)
    assert dup.status_code == 409 and "already deployed" in dup.json()["detail"]

    # below min_replicas: a rule across fields the document cannot state (400, not 422)
    r = api.client.post("/v1/deployments", json={**body, "max_replicas": 0}, headers=api.admin)
    assert r.status_code == 400 and "max_replicas" in r.json()["detail"], r.text
    for bad, field in (
        ({"max_replicas": -1}, "max_replicas"),
        ({"traffic_weight": -1}, "traffic_weight"),
        ({"min_replicas": -1}, "min_replicas"),
    ):
        r = api.client.post("/v1/deployments", json={**body, **bad}, headers=api.admin)
        assert r.status_code == 422 and field in r.json()["detail"], r.text
    for missing in (
        {"model": unique("m")},
        {"version": "404"},
        {"region": unique("r")},
        {"variant": "int8"},
    ):
        r = api.client.post("/v1/deployments", json={**body, **missing}, headers=api.admin)
        assert r.status_code == 404, r.text

    disabled = api.region(status="disabled")["name"]
    r = api.client.post("/v1/deployments", json={**body, "region": disabled}, headers=api.admin)
    assert r.status_code == 409 and "disabled" in r.json()["detail"]

    listed = api.ok("GET", f"/v1/deployments?model={model}")["items"]
    assert [d["id"] for d in listed] == [dep["id"]]
    assert api.ok("GET", f"/v1/deployments?region={region}&version=1")["total"] == 1
    assert api.ok("GET", f"/v1/deployments?region={disabled}")["total"] == 0

    url = f"/v1/deployments/{dep['id']}"
    r = api.client.patch(
        url, json={"traffic_weight": 0.1}, headers=api.headers(**{"If-Match": '"1"'})
    )
    assert r.status_code == 200 and r.json()["traffic_weight"] == 0.1 and r.headers["ETag"] == '"2"'
    r = api.client.patch(url, json={"min_replicas": 5}, headers=api.headers(**{"If-Match": '"2"'}))
    assert r.status_code == 400 and "max_replicas" in r.json()["detail"]
    assert api.ok("GET", url)["min_replicas"] == 1

    # a variant must exist on that version and have its artifact
    api.ok("POST", f"/v1/models/{model}/versions/1/variants", 201, json={"name": "int8"})
    r = api.client.patch(url, json={"variant": "int8"}, headers=api.headers(**{"If-Match": '"2"'}))
    assert r.status_code == 409 and "artifact" in r.json()["detail"]
    api.upload(f"/v1/models/{model}/versions/1/variants/int8/artifact", b"int8 weights")
    r = api.client.patch(url, json={"variant": "int8"}, headers=api.headers(**{"If-Match": '"2"'}))
    assert r.status_code == 200 and r.json()["variant"] == "int8"

    # what is deployed cannot be deleted from under the deployment
    r = api.client.delete(
        f"/v1/models/{model}/versions/1", headers=api.headers(**{"If-Match": "*"})
    )
    assert r.status_code == 409 and region in r.json()["detail"]
    assert (
        api.client.delete(
            f"/v1/models/{model}", headers=api.headers(**{"If-Match": "*"})
        ).status_code
        == 409
    )
    assert (
        api.client.delete(
            f"/v1/regions/{region}", headers=api.headers(**{"If-Match": "*"})
        ).status_code
        == 409
    )
    assert (
        api.client.delete(
            f"/v1/models/{model}/versions/1/variants/int8", headers=api.admin
        ).status_code
        == 409
    )

    assert api.client.delete(url, headers=api.headers(**{"If-Match": '"2"'})).status_code == 412
    assert api.client.delete(url, headers=api.headers(**{"If-Match": '"3"'})).status_code == 204
    assert api.client.get(url, headers=api.admin).status_code == 404
    assert (
        api.client.delete(
            f"/v1/models/{model}/versions/1", headers=api.headers(**{"If-Match": "*"})
        ).status_code
        == 204
    )
    assert (
        api.client.delete(
            f"/v1/regions/{region}", headers=api.headers(**{"If-Match": "*"})
        ).status_code
        == 204
    )
    assert api.client.get("/v1/deployments/not-a-number", headers=api.admin).status_code == 422
    assert api.client.get("/v1/deployments/99999999999", headers=api.admin).status_code == 422
    history = api.ok("GET", f"/v1/audit?entity=deployment&entity_key={dep['id']}")["items"]
    assert [e["action"] for e in history] == ["delete", "update", "update", "create"]
    assert history[0]["detail"] == {"model": model, "version": "1", "region": region}


def test_degrade_to_names_another_variant_of_the_version(api: Api) -> None:
    model, version = api.deployable()
    region = api.region()["name"]
    body = {"model": model, "version": version, "region": region}
    r = api.client.post("/v1/deployments", json={**body, "degrade_to": "int8"}, headers=api.admin)
    assert r.status_code == 404 and "int8" in r.json()["detail"], r.text
    api.ok("POST", f"/v1/models/{model}/versions/1/variants", 201, json={"name": "int8"})
    r = api.client.post("/v1/deployments", json={**body, "degrade_to": "int8"}, headers=api.admin)
    assert r.status_code == 409 and "artifact" in r.json()["detail"], r.text
    api.upload(f"/v1/models/{model}/versions/1/variants/int8/artifact", b"int8 weights")
    r = api.client.post(
        "/v1/deployments", json={**body, "degrade_to": "bad name!"}, headers=api.admin
    )
    assert r.status_code == 422, r.text

    created = api.client.post(
        "/v1/deployments", json={**body, "degrade_to": "int8"}, headers=api.admin
    )
    assert created.status_code == 201 and created.json()["degrade_to"] == "int8", created.text
    url = f"/v1/deployments/{created.json()['id']}"
    # serving the variant it degrades to degrades nothing
    r = api.client.patch(url, json={"variant": "int8"}, headers=api.headers(**{"If-Match": "*"}))
    assert r.status_code == 400 and "degrade_to" in r.json()["detail"], r.text
    # the variant cannot be deleted from under it
    r = api.client.delete(f"/v1/models/{model}/versions/1/variants/int8", headers=api.admin)
    assert r.status_code == 409 and "degrade_to" in r.json()["detail"], r.text
    r = api.client.patch(url, json={"degrade_to": None}, headers=api.headers(**{"If-Match": "*"}))
    assert r.status_code == 200 and r.json()["degrade_to"] is None, r.text
    audit = api.ok("GET", f"/v1/audit?entity=deployment&entity_key={created.json()['id']}")
    assert any(e["detail"].get("degrade_to") == "int8" for e in audit["items"]), audit
