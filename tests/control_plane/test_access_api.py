"""Tokens, scopes, the audit log, and a walk over every route checking it needs a token."""

from __future__ import annotations

import re
from typing import Any

from tests.control_plane.conftest import Api, unique

DUMMY_PARAMS = {
    "name": "m",
    "version": "1",
    "variant": "int8",
    "deployment_id": "1",
    "token_id": "1",
    "rollout_id": "1",
    "action": "pause",
}
READ_METHODS = {"get", "head"}


def _routes(api: Api) -> list[tuple[str, str]]:
    spec: dict[str, Any] = api.client.get("/openapi.json").json()
    routes = []
    for path, methods in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        concrete = re.sub(r"\{(\w+)\}", lambda m: DUMMY_PARAMS[m.group(1)], path)
        routes.extend((method.upper(), concrete) for method in methods)
    return routes


def test_every_v1_route_needs_a_token(api: Api) -> None:
    routes = _routes(api)
    assert len(routes) >= 30, routes  # the walk really covers the API
    for method, path in routes:
        for headers in (
            {},
            {"Authorization": "Bearer not-a-token"},
            {"Authorization": "Basic eDp5"},
        ):
            r = api.client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            if method != "HEAD":
                assert r.json()["error"] == "unauthenticated"
            assert r.headers["WWW-Authenticate"] == "Bearer"


def test_wrong_scope_is_a_403_on_every_write(api: Api) -> None:
    read, agent = api.token("read"), api.token("agent")
    writes = [(m, p) for m, p in _routes(api) if m.lower() not in READ_METHODS]
    assert any(m == "PUT" for m, _ in writes) and any(m == "DELETE" for m, _ in writes)
    for method, path in writes:
        # routers (read tokens) report demand, traffic and figures; agents may not
        reports = ("/v1/demand/", "/v1/traffic", "/v1/figures")
        tokens = (agent,) if path.startswith(reports) else (read, agent)
        for token in tokens:
            r = api.client.request(method, path, headers=api.headers(token))
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["error"] == "permission_denied"
    # reads that are not about the catalog are closed to agents; tokens are admin-only
    for path in ("/v1/regions", "/v1/deployments", "/v1/audit", "/v1/tokens"):
        assert api.client.get(path, headers=api.headers(agent)).status_code == 403
    assert api.client.get("/v1/tokens", headers=api.headers(read)).status_code == 403
    for path in ("/v1/models", "/v1/regions", "/v1/deployments", "/v1/audit"):
        assert api.client.get(path, headers=api.headers(read)).status_code == 200


def test_tokens_are_shown_once_and_revocable(api: Api) -> None:
    name = unique("ops")
    created = api.ok("POST", "/v1/tokens", 201, json={"name": name, "scopes": ["read", "read"]})
    token = created["token"]
    assert token.startswith("mrd_") and created["scopes"] == ["read"]
    listed = api.ok("GET", "/v1/tokens?limit=500")["items"]
    mine = [t for t in listed if t["name"] == name]
    assert len(mine) == 1 and "token" not in mine[0] and "token_hash" not in mine[0]

    assert api.client.get("/v1/models", headers=api.headers(token)).status_code == 200
    assert api.client.delete(f"/v1/tokens/{created['id']}", headers=api.admin).status_code == 204
    r = api.client.get("/v1/models", headers=api.headers(token))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert name not in {t["name"] for t in api.ok("GET", "/v1/tokens?limit=500")["items"]}
    revoked = api.ok("GET", "/v1/tokens?include_revoked=true&limit=500")["items"]
    assert [t["revoked_at"] is not None for t in revoked if t["name"] == name] == [True]
    assert api.client.delete("/v1/tokens/999999", headers=api.admin).status_code == 404

    for bad, field in (
        ({"name": name, "scopes": ["root"]}, "scopes"),
        ({"name": name, "scopes": []}, "scopes"),
        ({"name": "", "scopes": ["read"]}, "name"),
    ):
        r = api.client.post("/v1/tokens", json=bad, headers=api.admin)
        assert r.status_code == 422 and field in r.json()["detail"], r.text


def test_changes_are_audited_with_the_token_name(api: Api) -> None:
    name = unique("auditor")
    token = api.ok("POST", "/v1/tokens", 201, json={"name": name, "scopes": ["admin"]})["token"]
    model = unique("m")
    api.ok("POST", "/v1/models", 201, json={"name": model}, headers=api.headers(token))
    api.ok(
        "PATCH",
        f"/v1/models/{model}",
        json={"description": "d"},
        headers=api.headers(token, **{"If-Match": '"1"'}),
    )
    api.ok("DELETE", f"/v1/models/{model}", 204, headers=api.headers(token, **{"If-Match": '"2"'}))
    # a refused change leaves no audit entry
    api.client.patch(
        f"/v1/models/{model}",
        json={"description": "x"},
        headers=api.headers(token, **{"If-Match": "*"}),
    )

    entries = api.ok("GET", f"/v1/audit?actor={name}")["items"]
    assert [(e["action"], e["entity"], e["entity_key"]) for e in entries] == [
        ("delete", "model", model),
        ("update", "model", model),
        ("create", "model", model),
    ]
    assert entries[1]["detail"] == {"description": "d"}
    assert api.ok("GET", f"/v1/audit?entity=model&entity_key={model}&action=update")["total"] == 1
    # creating the token was audited under the creator, without the secret
    created = api.ok("GET", "/v1/audit?entity=api_token&limit=500")["items"]
    assert any(e["entity_key"].endswith(f":{name}") for e in created)
    assert all(token not in str(e["detail"]) for e in created)
