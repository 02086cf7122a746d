"""Loading models from an artifact server: sha256 check, bearer token, disk cache, unload."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.worker.conftest import MANAGE, MANAGEMENT_SECRET
from tests.worker.inprocess import live_worker
from tests.worker.models import BuiltModels, onnx_reference
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings

TOKEN = "artifact-token"


class ArtifactServer:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                body = server.files.get(self.path)
                if body is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> ArtifactServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def artifacts(models: BuiltModels) -> Iterator[tuple[ArtifactServer, str]]:
    data = models.mlp_onnx.read_bytes()
    with ArtifactServer({"/mlp.onnx": data}) as server:
        yield server, hashlib.sha256(data).hexdigest()


def _load(url: str, sha: str, version: str, **extra: object) -> dict[str, object]:
    return {
        "parameters": {
            "version": version,
            "format": "onnx",
            "artifact_url": url,
            "sha256": sha,
            "token": TOKEN,
            **extra,
        }
    }


async def test_load_infer_cache_and_unload(
    tmp_path: Path, models: BuiltModels, artifacts: tuple[ArtifactServer, str]
) -> None:
    server, sha = artifacts
    settings = WorkerSettings(cache_dir=tmp_path / "cache", management_token=MANAGEMENT_SECRET)
    dp = DataPlane(settings)
    async with (
        live_worker(settings, dp) as w,
        httpx.AsyncClient(base_url=w.url, headers=MANAGE) as client,
    ):
        r = await client.post(
            "/v2/repository/models/mlp/load", json=_load(f"{server.url}/mlp.onnx", sha, "1")
        )
        assert r.status_code == 200, r.text
        assert r.json()["sha256"] == sha
        assert (tmp_path / "cache" / sha).read_bytes() == models.mlp_onnx.read_bytes()

        x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
        body = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": [2, 16], "data": x.ravel().tolist()}
            ]
        }
        out = await client.post("/v2/models/mlp/versions/1/infer", json=body)
        np.testing.assert_allclose(
            np.asarray(out.json()["outputs"][0]["data"]).reshape(2, 4),
            onnx_reference(models.mlp_onnx, x),
            rtol=1e-5,
            atol=1e-6,
        )

        # Same digest, new version and variant: served from the cache, no download.
        r = await client.post(
            "/v2/repository/models/mlp/load",
            json=_load(f"{server.url}/mlp.onnx", sha, "2", variant="int8"),
        )
        assert r.status_code == 200 and r.json()["variant"] == "int8"
        assert server.hits == 1 and dp.artifacts.downloads == 1
        assert (await client.get("/v2/models/mlp")).json()["versions"] == ["1", "2"]

        r = await client.post("/v2/repository/models/mlp/unload", json={"version": "1"})
        assert r.status_code == 200
        assert (await client.post("/v2/models/mlp/versions/1/infer", json=body)).status_code == 404
        assert (await client.post("/v2/models/mlp/infer", json=body)).status_code == 200


async def test_bad_loads_are_refused(tmp_path: Path, artifacts: tuple[ArtifactServer, str]) -> None:
    server, sha = artifacts
    settings = WorkerSettings(cache_dir=tmp_path / "cache", management_token=MANAGEMENT_SECRET)
    dp = DataPlane(settings)
    async with (
        live_worker(settings, dp) as w,
        httpx.AsyncClient(base_url=w.url, headers=MANAGE) as client,
    ):
        url = "/v2/repository/models/mlp/load"
        wrong = await client.post(url, json=_load(f"{server.url}/mlp.onnx", "0" * 64, "1"))
        assert wrong.status_code == 400 and "sha256 mismatch" in wrong.json()["error"]
        missing = await client.post(url, json=_load(f"{server.url}/nothing", sha, "1"))
        assert missing.status_code == 404
        no_token = await client.post(
            url, json={"parameters": {"artifact_url": f"{server.url}/mlp.onnx", "sha256": sha}}
        )
        assert no_token.status_code == 400 and "credentials" in no_token.json()["error"]
        unknown = await client.post(url, json={"parameters": {"colour": "red"}})
        assert unknown.status_code == 400 and "colour" in unknown.json()["error"]
        local = await client.post(url, json={"parameters": {"path": "/etc/passwd"}})
        assert local.status_code == 400 and "disabled" in local.json()["error"]
        gone = await client.post("/v2/repository/models/mlp/unload")
        assert gone.status_code == 404
    # Nothing half-downloaded was left in the cache.
    assert list((tmp_path / "cache").iterdir()) == []
