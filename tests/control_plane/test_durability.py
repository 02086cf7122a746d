"""What the control plane acknowledged survives ``kill -9`` (real process, real sockets)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from meridian.net import free_port
from meridian.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LINE = re.compile(r"^admin token: (\S+)$", re.MULTILINE)


class ControlPlaneProcess:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"control plane exited early:\n{self.output}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False


@contextmanager
def control_plane(data_dir: Path, database_url: str | None) -> Iterator[ControlPlaneProcess]:
    port = free_port()
    args = [sys.executable, "-m", "meridian", "control-plane", "--port", str(port)]
    args += ["--grpc-port", str(free_port())]
    args += ["--data-dir", str(data_dir), "--log-level", "warning"]
    if database_url:
        args += ["--database-url", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        cp = ControlPlaneProcess(proc, f"http://127.0.0.1:{port}")
        wait_until(cp.healthy, timeout=30, what="control plane /healthz")
        yield cp
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def _exercise(data_dir: Path, database_url: str | None) -> None:
    artifact = os.urandom(256 * 1024)
    digest = hashlib.sha256(artifact).hexdigest()
    with control_plane(data_dir, database_url) as cp:
        match = wait_until(lambda: TOKEN_LINE.search(cp.output), timeout=10, what="admin token")
        token = match.group(1)
        assert cp.url in cp.output
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=cp.url, headers=auth, timeout=10) as http:
            assert http.post("/v1/models", json={"name": "mlp"}).status_code == 201
            version = {
                "version": "1",
                "format": "onnx",
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
            }
            assert http.post("/v1/models/mlp/versions", json=version).status_code == 201
            r = http.put(
                "/v1/models/mlp/versions/1/artifact",
                content=artifact,
                headers={"X-Artifact-Sha256": digest, "Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
            region = {"name": "eu-west", "lat": 50.1, "lon": 8.7}
            credential = http.post("/v1/regions", json=region).json()["agent_credential"]
            deployment = {"model": "mlp", "version": "1", "region": "eu-west"}
            assert http.post("/v1/deployments", json=deployment).status_code == 201
        cp.proc.send_signal(signal.SIGKILL)
        cp.proc.wait(timeout=10)

    with control_plane(data_dir, database_url) as cp:
        assert not TOKEN_LINE.search(cp.output), "an admin token existed; none may be created"
        with httpx.Client(base_url=cp.url, headers=auth, timeout=10) as http:
            assert http.get("/v1/models/mlp").json()["versions"] == ["1"]
            stored = http.get("/v1/models/mlp/versions/1/artifact")
            assert stored.status_code == 200 and stored.content == artifact
            deployments = http.get("/v1/deployments?model=mlp").json()["items"]
            assert [(d["version"], d["region"]) for d in deployments] == [("1", "eu-west")]
            agent = {"Authorization": f"Bearer {credential}"}
            assert http.get("/v1/models/mlp", headers=agent).status_code == 200
            audit = http.get("/v1/audit?limit=50").json()["items"]
            assert {"model", "model_version", "region", "deployment"} <= {
                e["entity"] for e in audit
            }


@pytest.mark.slow
def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    _exercise(tmp_path, None)
    assert (tmp_path / "meridian.sqlite").exists()


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_survives_kill_9(tmp_path: Path, postgres_url: str) -> None:
    _exercise(tmp_path, postgres_url)
