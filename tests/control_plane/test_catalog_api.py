"""Models, versions and variants over REST, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi.testclient import TestClient

from control_plane.schemas import ModelUpdate
from tests.control_plane.conftest import Api, unique


def test_model_lifecycle_with_etags(api: Api) -> None:
    created = api.client.post(
        "/v1/models", json={"name": unique("m"), "description": "first"}, headers=api.admin
    )
    assert created.status_code == 201
    assert created.headers["ETag"] == '"1"'
    name = created.json()["name"]
    assert created.headers["Location"] == f"/v1/models/{name}"

    got = api.client.get(f"/v1/models/{name}", headers=api.admin)
    assert got.status_code == 200 and got.headers["ETag"] == '"1"'
    assert got.json()["description"] == "first"

    missing = api.client.patch(f"/v1/models/{name}", json={"description": "x"}, headers=api.admin)
    assert missing.status_code == 428
    assert "If-Match" in missing.json()["detail"]

    patched = api.client.patch(
        f"/v1/models/{name}",
        json={"description": "second"},
        headers=api.headers(**{"If-Match": '"1"'}),
    )
    assert patched.status_code == 200, patched.text
    assert patched.headers["ETag"] == '"2"' and patched.json()["description"] == "second"

    stale = api.client.patch(
        f"/v1/models/{name}",
        json={"description": "lost"},
        headers=api.headers(**{"If-Match": '"1"'}),
    )
    assert stale.status_code == 412
    assert stale.json()["error"] == "precondition_failed"
    assert api.ok("GET", f"/v1/models/{name}")["description"] == "second"

    assert (
        api.client.delete(
            f"/v1/models/{name}", headers=api.headers(**{"If-Match": '"1"'})
        ).status_code
        == 412
    )
    assert api.client.delete(f"/v1/models/{name}", headers=api.admin).status_code == 428
    assert (
        api.client.delete(
            f"/v1/models/{name}", headers=api.headers(**{"If-Match": 'W/"2"'})
        ).status_code
        == 204
    )
    gone = api.client.get(f"/v1/models/{name}", headers=api.admin)
    assert gone.status_code == 404 and gone.json() == {
        "error": "not_found",
        "detail": f"model {name!r} not found",
    }


def test_duplicates_conflict(api: Api) -> None:
    name = api.model()
    dup = api.client.post("/v1/models", json={"name": name}, headers=api.admin)
    assert dup.status_code == 409 and name in dup.json()["detail"]
    api.version(name, "1")
    assert (
        api.client.post(
            f"/v1/models/{name}/versions",
            json={
                "version": "1",
                "format": "onnx",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
            },
            headers=api.admin,
        ).status_code
        == 409
    )
    api.ok("POST", f"/v1/models/{name}/versions/1/variants", 201, json={"name": "int8"})
    again = api.client.post(
        f"/v1/models/{name}/versions/1/variants", json={"name": "int8"}, headers=api.admin
    )
    assert again.status_code == 409


def test_invalid_input_is_a_422_naming_the_field(api: Api) -> None:
    cases = [
        ("/v1/models", {"name": "x" * 129}, "name"),
        ("/v1/models", {"name": "has space"}, "name"),
        ("/v1/models", {"name": "ok", "colour": "red"}, "colour"),
    ]
    for url, body, field in cases:
        r = api.client.post(url, json=body, headers=api.admin)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_input"
        assert any(f["field"].startswith(field) for f in r.json()["fields"]), r.json()

    model = api.model()
    bad_dtype = {
        "version": "1",
        "format": "onnx",
        "inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
    }
    r = api.client.post(f"/v1/models/{model}/versions", json=bad_dtype, headers=api.admin)
    assert r.status_code == 422 and "inputs.0.datatype" in r.json()["detail"]
    bad_shape = {**bad_dtype, "inputs": [{"name": "x", "datatype": "FP32", "shape": [-2]}]}
    r = api.client.post(f"/v1/models/{model}/versions", json=bad_shape, headers=api.admin)
    assert r.status_code == 422 and "inputs.0.shape.0" in r.json()["detail"]
    bad_format = {**bad_dtype, "format": "tensorflow", "inputs": bad_dtype["outputs"]}
    r = api.client.post(f"/v1/models/{model}/versions", json=bad_format, headers=api.admin)
    assert r.status_code == 422 and "format" in r.json()["detail"]
    dup_names = {**bad_dtype, "inputs": [bad_dtype["outputs"][0], bad_dtype["outputs"][0]]}
    r = api.client.post(f"/v1/models/{model}/versions", json=dup_names, headers=api.admin)
    # a rule the document cannot state: 400 (422 means "not as the document says")
    assert r.status_code == 400 and "unique" in r.json()["detail"]
    r = api.client.post(
        f"/v1/models/{model}/versions/x/variants", json={"name": "INT8"}, headers=api.admin
    )
    assert r.status_code == 422 and "name" in r.json()["detail"]


def test_versions_list_get_patch_and_every_datatype(api: Api) -> None:
    model = api.model()
    dtypes = [
        "BOOL",
        "UINT8",
        "UINT16",
        "UINT32",
        "UINT64",
        "INT8",
        "INT16",
        "INT32",
        "INT64",
        "FP16",
        "FP32",
        "FP64",
        "BYTES",
    ]
    inputs = [{"name": f"in{i}", "datatype": d, "shape": [-1, i + 1]} for i, d in enumerate(dtypes)]
    created = api.version(model, "1", inputs=inputs)
    assert [i["datatype"] for i in created["inputs"]] == dtypes
    api.version(model, "2", format="torchscript")
    page = api.ok("GET", f"/v1/models/{model}/versions?limit=1&offset=1")
    assert page["total"] == 2 and [v["version"] for v in page["items"]] == ["2"]
    assert api.ok("GET", f"/v1/models/{model}")["versions"] == ["1", "2"]

    new_outputs = [{"name": "probs", "datatype": "FP16", "shape": [-1, 10]}]
    r = api.client.patch(
        f"/v1/models/{model}/versions/2",
        json={"outputs": new_outputs},
        headers=api.headers(**{"If-Match": "*"}),
    )
    assert r.status_code == 200 and r.json()["outputs"] == new_outputs
    assert r.json()["row_version"] == 2
    r = api.client.patch(
        f"/v1/models/{model}/versions/2",
        json={"format": None},
        headers=api.headers(**{"If-Match": "*"}),
    )
    assert r.status_code == 400 and "format" in r.json()["detail"]
    r = api.client.patch(
        f"/v1/models/{model}/versions/2", json={}, headers=api.headers(**{"If-Match": "nope"})
    )
    # the document gives If-Match a pattern: a value that is no ETag is a 422 naming it
    assert r.status_code == 422 and "If-Match (header)" in r.json()["detail"]

    assert api.client.get(f"/v1/models/{model}/versions/9", headers=api.admin).status_code == 404
    assert (
        api.client.get(f"/v1/models/{unique('none')}/versions", headers=api.admin).status_code
        == 404
    )
    r = api.client.delete(
        f"/v1/models/{model}/versions/1", headers=api.headers(**{"If-Match": '"1"'})
    )
    assert r.status_code == 204
    assert api.ok("GET", f"/v1/models/{model}")["versions"] == ["2"]


def test_variants_list_get_delete(api: Api) -> None:
    model = api.model()
    api.version(model)
    base = f"/v1/models/{model}/versions/1/variants"
    api.ok(
        "POST",
        base,
        201,
        json={"name": "int8", "description": "dynamic quantization", "max_abs_error": 0.01},
    )
    api.ok("POST", base, 201, json={"name": "fp16"})
    assert [v["name"] for v in api.ok("GET", base)["items"]] == ["fp16", "int8"]
    got = api.ok("GET", f"{base}/int8")
    assert got["max_abs_error"] == 0.01 and got["artifact_sha256"] is None
    assert api.ok("GET", f"/v1/models/{model}/versions/1")["variants"] == ["int8", "fp16"]
    assert (
        api.client.post(
            base, json={"name": "q", "max_abs_error": -1}, headers=api.admin
        ).status_code
        == 422
    )
    assert api.client.delete(f"{base}/fp16", headers=api.admin).status_code == 204
    assert api.client.get(f"{base}/fp16", headers=api.admin).status_code == 404


def test_pagination_limits(api: Api) -> None:
    r = api.client.get("/v1/models?limit=501", headers=api.admin)
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    r = api.client.get("/v1/models?offset=-1", headers=api.admin)
    assert r.status_code == 422 and "offset" in r.json()["detail"]
    names = sorted(api.model() for _ in range(3))
    everything = api.ok("GET", "/v1/models?limit=500")
    assert set(names) <= {m["name"] for m in everything["items"]}
    assert everything["total"] >= 3 and everything["limit"] == 500


def test_stale_write_caught_by_sqlalchemy_is_a_412(api: Api) -> None:
    """A concurrent writer bumps row_version after our If-Match check: 412, nothing lost."""
    name = api.model()
    registry = api.registry
    fired: list[bool] = []

    def concurrent_writer(session: sa.orm.Session, _ctx: object, _instances: object) -> None:
        if fired:
            return
        fired.append(True)
        session.connection().execute(
            sa.text(
                "UPDATE models SET row_version = row_version + 1, description = 'theirs' "
                "WHERE name = :n"
            ),
            {"n": name},
        )

    sa.event.listen(registry.db.writes, "before_flush", concurrent_writer)
    try:
        r = api.client.patch(
            f"/v1/models/{name}",
            json={"description": "ours"},
            headers=api.headers(**{"If-Match": '"1"'}),
        )
    finally:
        sa.event.remove(registry.db.writes, "before_flush", concurrent_writer)
    assert fired and r.status_code == 412, r.text
    # the whole transaction rolled back: the model is as before
    assert api.ok("GET", f"/v1/models/{name}")["description"] == ""
    # and the registry core raises the same for direct callers
    assert (
        registry.update_model(
            name, ModelUpdate(description="ok"), expected_version=1, actor="t"
        ).row_version
        == 2
    )


def test_unexpected_errors_are_a_fixed_500(api: Api, monkeypatch: object) -> None:
    def broken(name: str) -> None:
        raise RuntimeError("secret internals")

    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setattr(api.registry, "get_model", broken)
    client = TestClient(api.client.app, raise_server_exceptions=False)
    r = client.get("/v1/models/anything", headers=api.admin)
    assert r.status_code == 500
    assert r.json() == {
        "error": "internal",
        "detail": "internal error; the control plane logged it",
    }
    assert "secret" not in r.text


def test_unknown_route_is_a_json_404(api: Api) -> None:
    r = api.client.get("/v1/nothing-here", headers=api.admin)
    assert r.status_code == 404 and r.json()["error"] == "not_found"
