"""``meridian ca init`` → a control plane with ``--tls-dir`` → ``meridian agent --ca-cert``:
HTTPS on the admin API, enrollment, a mutual-TLS agent stream, and rotation ending it."""

from __future__ import annotations

import hashlib
import os
import re
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from meridian.cli import main as meridian_main
from meridian.net import free_port
from meridian.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TOKEN_LINE = re.compile(r"^admin token: (\S+)$", re.MULTILINE)


class Process:
    """A subprocess whose combined output is kept for assertions and failure messages."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited early:\n{self.output}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc.stdout:
            self.proc.stdout.close()


def build_models(directory: Path) -> Any:
    from tests.worker.models import build

    directory.mkdir(parents=True, exist_ok=True)
    return build(directory)


def deploy(http: httpx.Client, artifact: bytes) -> None:
    assert http.post("/v1/models", json={"name": "mlp"}).status_code == 201
    version = {
        "version": "1",
        "format": "onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert http.post("/v1/models/mlp/versions", json=version).status_code == 201
    digest = hashlib.sha256(artifact).hexdigest()
    r = http.put(
        "/v1/models/mlp/versions/1/artifact",
        content=artifact,
        headers={"X-Artifact-Sha256": digest, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200, r.text
    deployment = {"model": "mlp", "version": "1", "region": "eu-west", "min_replicas": 1}
    created = http.post("/v1/deployments", json=deployment)
    assert created.status_code == 201, created.text


@pytest.mark.slow
def test_control_plane_and_agent_run_with_tls_from_the_fleet_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    assert meridian_main(["ca", "init", "--dir", str(ca_dir)]) == 0
    http_port, grpc_port, enroll_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env.update(PYTHONUNBUFFERED="1", MERIDIAN_AGENT_ENROLL_PORT=str(enroll_port))
    cp = Process(
        [sys.executable, "-m", "meridian", "control-plane", "--port", str(http_port),
         "--grpc-port", str(grpc_port), "--data-dir", str(tmp_path / "data"),
         "--tls-dir", str(ca_dir), "--log-level", "warning"],
        env,
    )  # fmt: skip
    agent: Process | None = None
    trust = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    url = f"https://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=url, verify=trust, timeout=5) as http:

            def healthy() -> bool:
                cp.alive()
                try:
                    return http.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(healthy, timeout=30, what="the control plane over HTTPS")
            with pytest.raises(httpx.TransportError):  # no plaintext on the same port
                httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=2)
            assert f"enroll on port {enroll_port}" in cp.output
            token = wait_until(lambda: TOKEN_LINE.search(cp.output), timeout=10, what="token")
            assert token is not None
            http.headers["Authorization"] = f"Bearer {token.group(1)}"
            created = http.post("/v1/regions", json={"name": "eu-west", "lat": 53.3, "lon": -6.2})
            assert created.status_code == 201, created.text
            credential = tmp_path / "credential"
            credential.write_text(created.json()["agent_credential"])
            agent = Process(
                [sys.executable, "-m", "meridian", "agent",
                 "--control-plane", f"127.0.0.1:{grpc_port}", "--region", "eu-west",
                 "--credential-file", str(credential), "--simulate-gpus", "1",
                 "--ca-cert", str(ca_dir / "ca.pem"), "--enroll", f"127.0.0.1:{enroll_port}",
                 "--report-interval", "0.2", "--log-level", "INFO"],
                env,
            )  # fmt: skip

            def agent_connected(expected: bool) -> bool:
                agent.alive()
                health = http.get("/v1/regions/eu-west/health")
                return health.status_code == 200 and health.json()["agent_connected"] is expected

            wait_until(lambda: agent_connected(True), timeout=20, what="the agent over mTLS")
            assert "certificate for region 'eu-west' valid until" in agent.output
            assert "PLAINTEXT" not in agent.output
            # the router: HTTPS with a fleet certificate, following the snapshot over HTTPS
            out = tmp_path / "router"
            issue = ["ca", "issue", "--dir", str(ca_dir), "--role", "router",
                     "--host", "127.0.0.1", "--out", str(out)]  # fmt: skip
            assert meridian_main(issue) == 0
            cert, key = f"{out}.pem", f"{out}-key.pem"
            router_port = free_port()
            router = Process(
                [sys.executable, "-m", "meridian", "router", "--port", str(router_port),
                 "--control-plane", url, "--token", token.group(1),
                 "--snapshot-path", str(tmp_path / "router" / "snapshot.json"),
                 "--tls-cert", cert, "--tls-key", key, "--fleet-ca", str(ca_dir / "ca.pem"),
                 "--worker-cert", cert, "--worker-key", key],
                env,
            )  # fmt: skip
            try:

                def router_follows() -> bool:
                    router.alive()
                    try:
                        r = httpx.get(f"https://127.0.0.1:{router_port}/v2/health/ready",
                                      verify=trust, timeout=2)  # fmt: skip
                    except httpx.TransportError:
                        return False
                    return r.json().get("snapshot_version") is not None

                wait_until(router_follows, timeout=20, what="the router's snapshot over HTTPS")
                assert "PLAINTEXT" not in router.output
                # a deployment: the agent starts a TLS worker (its certificate from the
                # control plane, its artifact over HTTPS), the router infers through it
                onnx = build_models(tmp_path / "models").mlp_onnx
                deploy(http, onnx.read_bytes())
                payload = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
                                       "data": [0.5] * 16}]}  # fmt: skip

                last: list[str] = []

                def inferred() -> bool:
                    router.alive()
                    try:
                        r = httpx.post(f"https://127.0.0.1:{router_port}/v2/models/mlp/infer",
                                       json=payload, verify=trust, timeout=10)  # fmt: skip
                    except httpx.TransportError as exc:
                        last[:] = [repr(exc)]
                        return False
                    last[:] = [f"{r.status_code} {r.text[:300]}"]
                    return r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 4

                try:
                    wait_until(inferred, timeout=90, interval=0.5, what="inference through TLS")
                except TimeoutError as exc:
                    ready = httpx.get(f"https://127.0.0.1:{router_port}/v2/health/ready",
                                      verify=trust).text  # fmt: skip
                    logs = (
                        f"last answer: {last}\nrouter ready: {ready}\nregion: "
                        f"{http.get('/v1/regions/eu-west/health').text[:1500]}\n"
                        f"router:\n{router.output[-1500:]}"
                    )
                    raise AssertionError(logs) from exc
                health = http.get("/v1/regions/eu-west/health").json()
                assert health["workers"] and all(
                    w["endpoint"].startswith("https://") for w in health["workers"]
                ), health
            finally:
                router.stop()
            rotated = http.post("/v1/regions/eu-west/credential")
            assert rotated.status_code == 200, rotated.text
            wait_until(
                lambda: "refused this agent" in agent.output,
                timeout=10,
                what="the rotated credential ending the stream",
            )
            wait_until(lambda: agent_connected(False), timeout=10, what="the agent gone")
    finally:
        if agent is not None:
            agent.stop()
        cp.stop()
