"""A real control plane (uvicorn on 127.0.0.1, SQLite, in-process coordination) with real
region agents streaming to it over gRPC, and headless Chromium driven by Selenium: what
the console's browser tests run against."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from sqlalchemy.orm import sessionmaker

from control_plane.app import create_app
from control_plane.db.models import (
    ApiToken,
    Base,
    Deployment,
    Model,
    ModelFormat,
    ModelVersion,
    Region,
    RegionStatus,
)
from control_plane.registry._base import secret_hash
from control_plane.settings import ControlPlaneSettings
from meridian.waiting import wait_until
from region_agent.gpus import Fault
from tests.fleet_support import RunningAgent, start_agent

T = TypeVar("T")

ADMIN_TOKEN = "console-test-admin-token-0123456789"
READ_TOKEN = "console-test-read-token-0123456789"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# name: (lat, lon, GPUs)
SITES = {
    "us-east": (39.04, -77.49, 8),
    "us-west": (45.60, -121.18, 4),
    "eu-west": (53.35, -6.26, 8),
    "eu-central": (50.11, 8.68, 4),
    "ap-south": (19.08, 72.88, 4),
    "ap-northeast": (35.68, 139.65, 8),
    "sa-east": (-23.56, -46.64, 2),
}


def many_sites(n: int) -> dict[str, tuple[float, float, int]]:
    """``n`` regions spread over the inhabited latitudes."""
    return {
        f"r{i:02d}": (-40.0 + (i * 37) % 100, -170.0 + (i * 73) % 340, 1 + i % 8) for i in range(n)
    }


def make_console_registry(url: str, sites: dict[str, tuple[float, float, int]]) -> None:
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as s:
        s.add(ApiToken(name="console-admin", token_hash=secret_hash(ADMIN_TOKEN), scopes="admin"))
        s.add(ApiToken(name="console-reader", token_hash=secret_hash(READ_TOKEN), scopes="read"))
        model = Model(name="resnet")
        version = ModelVersion(
            model=model,
            version="1",
            format=ModelFormat.ONNX,
            artifact_uri="http://127.0.0.1:1/artifacts/resnet-1.onnx",
            artifact_sha256="ab" * 32,
        )
        s.add_all([model, version])
        for name, (lat, lon, gpus) in sites.items():
            region = Region(
                name=name, lat=lat, lon=lon, gpu_type="H100", gpu_count=gpus,
                status=RegionStatus.ACTIVE, agent_credential_hash=secret_hash(f"cred-{name}"),
            )  # fmt: skip
            s.add(region)
            deployment = Deployment(
                model_version=version, region=region, min_replicas=1, max_replicas=gpus,
                traffic_weight=1.0,
            )  # fmt: skip
            s.add(deployment)
    engine.dispose()


@dataclass
class ConsoleFleet:
    """The control plane serving ``/ui`` and one agent per region (all in this process)."""

    url: str
    grpc_address: str
    server: uvicorn.Server
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    loop_thread: threading.Thread
    console: Any
    agents: dict[str, RunningAgent] = field(default_factory=dict)
    gpus: dict[str, int] = field(default_factory=dict)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run ``coro`` on the agents' event loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_agent(self, region: str) -> None:
        gpus = self.gpus[region]

        async def start() -> RunningAgent:
            return start_agent([self.grpc_address], region, gpus=gpus, credential=f"cred-{region}")

        self.agents[region] = self.run(start())

    def inject(self, region: str, gpu: int, fault: Fault) -> None:
        """A GPU fault in ``region``'s simulated GPUs (its next report carries it)."""
        self.loop.call_soon_threadsafe(self.agents[region].gpus.inject, gpu, fault)

    def kill_agent(self, region: str) -> None:
        """The agent's process dies: its stream ends and it reports no more."""
        self.run(self.agents.pop(region).stop())

    def snapshot_states(self) -> dict[str, str]:
        answer = httpx.get(
            f"{self.url}/v1/routing/snapshot",
            headers={"Authorization": f"Bearer {READ_TOKEN}"},
            timeout=5,
        )
        answer.raise_for_status()
        return {r["name"]: r["state"] for r in answer.json()["regions"]}

    def stop(self) -> None:
        for region in list(self.agents):
            self.kill_agent(region)
        self.console.end_streams_soon()  # open event streams would hold the server up
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.run(_cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout=10)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()
        assert not self.thread.is_alive(), "the control plane did not stop"


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def console_fleet_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[ConsoleFleet] = []

    def start(sites: dict[str, tuple[float, float, int]], *, agents: bool = True) -> ConsoleFleet:
        url = f"sqlite:///{tmp_path / 'registry.db'}"
        make_console_registry(url, sites)
        settings = ControlPlaneSettings(
            data_dir=tmp_path,
            database_url=url,
            migrate_on_start=False,
            grpc_port=0,
            report_interval_s=0.2,
            snapshot_refresh_s=1.0,
        )
        # bound here and handed to uvicorn: no other process can take the port in between
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        app = create_app(settings)
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on",
                           log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        )  # fmt: skip
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name="console-api", daemon=True
        )
        thread.start()
        wait_until(lambda: server.started or not thread.is_alive(), timeout=30, what="API up")
        assert server.started, "the control plane did not start"
        loop = asyncio.new_event_loop()
        loop_thread = threading.Thread(target=loop.run_forever, name="agents", daemon=True)
        loop_thread.start()
        fleet = ConsoleFleet(
            f"http://127.0.0.1:{port}",
            f"127.0.0.1:{app.state.fleet.grpc_port}",
            server, thread, loop, loop_thread, app.state.console,
            gpus={name: gpus for name, (_, _, gpus) in sites.items()},
        )  # fmt: skip
        started.append(fleet)
        if agents:
            for region in sites:
                fleet.start_agent(region)
        return fleet

    yield start
    for fleet in started:
        fleet.stop()


def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) with its console log kept for the test to read."""
    if not chromium_available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium)")
        pytest.skip("no chromium/chromedriver on this machine")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def artifact_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $MERIDIAN_TEST_ARTIFACTS, else the test's tmp dir."""
    root = os.environ.get("MERIDIAN_TEST_ARTIFACTS")
    out = Path(root) / "console" if root else tmp_path / "artifacts"
    out.mkdir(parents=True, exist_ok=True)
    return out


def admin_call(fleet: ConsoleFleet, method: str, path: str, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
    return httpx.request(method, f"{fleet.url}{path}", headers=headers, timeout=10, **kwargs)


def create_rollout(fleet: ConsoleFleet, waves: list[list[str]]) -> dict[str, Any]:
    """resnet 2 (with its artifact) rolled out over resnet 1, through the admin API: two
    steps (10%, then all), baking an hour, so it stays in its first step."""
    body = {
        "version": "2",
        "format": "onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    r = admin_call(fleet, "POST", "/v1/models/resnet/versions", json=body)
    assert r.status_code == 201, r.text
    data = b"onnx-bytes-of-resnet-2"
    sha = hashlib.sha256(data).hexdigest()
    r = admin_call(fleet, "PUT", "/v1/models/resnet/versions/2/artifact", content=data,
                   headers={"X-Artifact-Sha256": sha})  # fmt: skip
    assert r.status_code == 200, r.text
    rollout = {"model": "resnet", "from_version": "1", "to_version": "2", "waves": waves,
               "steps": [0.1, 1.0], "bake_s": 3600, "gates": {"min_requests": 20}}  # fmt: skip
    r = admin_call(fleet, "POST", "/v1/rollouts", json=rollout)
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


__all__ = [
    "ConsoleFleet",
    "admin_call",
    "artifact_dir",
    "browser",
    "console_fleet_factory",
    "create_rollout",
]
