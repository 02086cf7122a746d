"""Real ``meridian worker`` processes serving the tiny generative model, for router tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from tests.worker.generation.tiny import build_tiny_gpt2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def metric(self, name: str, **labels: str) -> float:
        """A counter's value from the worker's /metrics (0 when absent)."""
        text = httpx.get(self.endpoint + "/metrics", timeout=5).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def start_worker(name: str, model_dir: Path, log_dir: Path) -> WorkerProcess:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    with (log_dir / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meridian.cli", "worker", "--http-port", str(port),
             "--grpc-port", "-1", "--model", f"tiny:1={model_dir}"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    worker = WorkerProcess(name, port, proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker {name} exited: {(log_dir / f'{name}.log').read_text()}")
        try:
            if httpx.get(worker.endpoint + "/v2/health/ready", timeout=1).status_code == 200:
                return worker
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling a readiness condition, bounded by the deadline
    worker.stop()
    raise RuntimeError(f"worker {name} not ready within 120 s")


def generative_snapshot(workers: dict[str, tuple[WorkerProcess, float, float]]) -> RoutingSnapshot:
    regions = tuple(
        RegionView(
            name=name, state=HealthState.HEALTHY, lat=lat, lon=lon, capacity_rps=100.0,
            workers=(WorkerView(f"{name}-w1", w.endpoint, HealthState.HEALTHY, ("tiny:1",)),),
        )
        for name, (w, lat, lon) in workers.items()
    )  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=0.0, regions=regions)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_positions=512)


@pytest.fixture(scope="module")
def workers(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, WorkerProcess]]:
    logs = tmp_path_factory.mktemp("logs")
    started: dict[str, WorkerProcess] = {}
    try:
        for name in ("near", "far"):
            started[name] = start_worker(name, tiny_model, logs)
        yield started
    finally:
        for w in started.values():
            w.stop()
