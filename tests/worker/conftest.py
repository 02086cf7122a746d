from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from meridian.net import free_port
from meridian.waiting import wait_until
from tests.worker.models import BuiltModels, build

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> BuiltModels:
    return build(tmp_path_factory.mktemp("models"))


MANAGEMENT_TOKEN = "test-management-token"  # the workers' load/unload bearer token
MANAGE = {"authorization": f"Bearer {MANAGEMENT_TOKEN}"}  # lower case: gRPC metadata too
MANAGEMENT_SECRET = SecretStr(MANAGEMENT_TOKEN)  # as WorkerSettings.management_token


@dataclass(frozen=True)
class WorkerProcess:
    http_url: str
    http_address: str
    grpc_address: str


@contextmanager
def running_worker(models: Sequence[str], workdir: Path) -> Iterator[WorkerProcess]:
    """A real ``meridian worker`` subprocess serving ``models`` (``name:version=path``)."""
    http_port, grpc_port = free_port(), free_port()
    env = {
        **os.environ,
        "MERIDIAN_WORKER_CACHE_DIR": str(workdir / "cache"),
        "MERIDIAN_WORKER_MANAGEMENT_TOKEN": MANAGEMENT_TOKEN,
    }
    cmd = [
        sys.executable, "-m", "meridian", "worker", "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--engine-threads", "1", "--allow-local-paths",
        "--max-request-bytes", str(1 << 20),
    ]  # fmt: skip
    for model in models:
        cmd += ["--model", model]
    log = (workdir / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.1, what="worker ready")
        yield WorkerProcess(url, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def worker_process(
    models: BuiltModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """A real worker serving the test models.

    gRPC clients talk to it from the test process; the worker's own protobuf
    stubs stay in the subprocess (they share the ``inference`` package with
    tritonclient's, and one process cannot hold both)."""
    specs = [
        f"mlp:1={models.mlp_onnx}",
        f"cnn:1={models.cnn_onnx}",
        f"mlp_ts:1={models.mlp_torchscript}",
    ]
    with running_worker(specs, tmp_path_factory.mktemp("worker")) as worker:
        yield worker
