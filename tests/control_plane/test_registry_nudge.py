"""Acknowledged writes nudge the fleet leader before the response goes out; reads and
refused writes do not."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from control_plane.fleet.nudge import RegistryWriteNudge


def _app(nudges: list[str], fail: bool = False) -> FastAPI:
    app = FastAPI()

    async def nudge() -> None:
        if fail:
            raise ConnectionError("coordination down")
        nudges.append("nudge")

    @app.get("/v1/things")
    def read() -> dict[str, int]:
        return {"n": len(nudges)}

    @app.post("/v1/things", status_code=201)
    def write() -> dict[str, int]:
        return {"nudges_before": len(nudges)}

    @app.post("/v1/refused")
    def refused() -> None:
        raise HTTPException(409, "no")

    @app.post("/healthz")
    def outside() -> None:
        return None

    @app.post("/v1/demand/m", status_code=202)
    def hint() -> None:
        return None

    app.add_middleware(RegistryWriteNudge, nudge=nudge, skip_prefixes=("/v1/demand/",))
    return app


def test_only_successful_v1_writes_nudge() -> None:
    nudges: list[str] = []
    with TestClient(_app(nudges)) as client:
        assert client.get("/v1/things").status_code == 200
        assert client.post("/v1/refused").status_code == 409
        assert client.post("/healthz").status_code == 200
        assert client.post("/v1/demand/m").status_code == 202  # no registry write
        assert nudges == []
        r = client.post("/v1/things")
        assert r.status_code == 201 and r.json() == {"nudges_before": 0}
        assert nudges == ["nudge"]  # sent before the client had its answer


def test_a_failed_nudge_does_not_fail_the_write() -> None:
    nudges: list[str] = []
    with TestClient(_app(nudges, fail=True)) as client:
        assert client.post("/v1/things").status_code == 201
    assert nudges == []
