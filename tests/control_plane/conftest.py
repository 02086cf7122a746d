"""One running admin API per database backend (SQLite file, real PostgreSQL).

The app is shared by the tests of a session (each test uses names of its own),
so the suite pays for migrations once per backend.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from control_plane.app import create_app
from control_plane.registry import Registry
from control_plane.settings import ControlPlaneSettings
from tests import services

BOOTSTRAP_TOKEN = "test-bootstrap-admin-token-0123456789"
MAX_ARTIFACT_BYTES = 8 * 1024 * 1024
BACKENDS = ["sqlite", "postgres"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


SIGNATURE: dict[str, Any] = {
    "format": "onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
}


@dataclass
class Api:
    """A client of one running admin API plus helpers to build fixtures through it."""

    client: TestClient
    backend: str
    settings: ControlPlaneSettings
    admin: dict[str, str] = field(
        default_factory=lambda: {"Authorization": f"Bearer {BOOTSTRAP_TOKEN}"}
    )

    @property
    def registry(self) -> Registry:
        registry: Registry = self.client.app.state.registry  # type: ignore[attr-defined]
        return registry

    def headers(self, token: str | None = None, **extra: str) -> dict[str, str]:
        base = {"Authorization": f"Bearer {token}"} if token else dict(self.admin)
        return {**base, **extra}

    def ok(self, method: str, url: str, expect: int = 200, **kwargs: Any) -> Any:
        kwargs.setdefault("headers", self.admin)
        response = self.client.request(method, url, **kwargs)
        assert response.status_code == expect, (method, url, response.status_code, response.text)
        return response.json() if response.content else None

    def model(self, **extra: Any) -> str:
        name = unique("m")
        self.ok("POST", "/v1/models", 201, json={"name": name, **extra})
        return name

    def version(self, model: str, version: str = "1", **overrides: Any) -> dict[str, Any]:
        body = {"version": version, **SIGNATURE, **overrides}
        result: dict[str, Any] = self.ok("POST", f"/v1/models/{model}/versions", 201, json=body)
        return result

    def upload(self, path: str, data: bytes) -> dict[str, Any]:
        headers = self.headers(**{"X-Artifact-Sha256": sha256(data)})
        result: dict[str, Any] = self.ok("PUT", path, 200, content=data, headers=headers)
        return result

    def deployable(self) -> tuple[str, str]:
        """A model with version 1 whose artifact is uploaded."""
        model = self.model()
        self.version(model)
        self.upload(f"/v1/models/{model}/versions/1/artifact", b"onnx-bytes:" + model.encode())
        return model, "1"

    def region(self, **extra: Any) -> dict[str, Any]:
        body = {"name": unique("r"), "lat": 50.1, "lon": 8.7, "gpu_type": "L4", **extra}
        result: dict[str, Any] = self.ok("POST", "/v1/regions", 201, json=body)
        return result

    def token(self, *scopes: str) -> str:
        body = {"name": unique("t"), "scopes": list(scopes)}
        return str(self.ok("POST", "/v1/tokens", 201, json=body)["token"])


def _database_url(backend: str, data_dir: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{data_dir / 'registry.sqlite'}"
    else:
        with services.fresh_postgres_database() as url:
            yield url


@pytest.fixture(scope="session", params=BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"cp-{backend}")
    for url in _database_url(backend, data_dir):
        settings = ControlPlaneSettings(
            data_dir=data_dir,
            database_url=url,
            bootstrap_admin_token=BOOTSTRAP_TOKEN,
            max_artifact_bytes=MAX_ARTIFACT_BYTES,
            redis_url=services.REDIS_URL,
        )
        with TestClient(create_app(settings)) as client:
            yield Api(client=client, backend=backend, settings=settings)
