"""Shared setup for fleet-plane tests: a registry in SQL, a runtime, agents."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

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
from control_plane.fleet.service import FleetRuntime, FleetSettings
from control_plane.fleet.store import credential_hash
from meridian.coordination import Coordination
from meridian.pki import CertificateAuthority
from meridian.pki.ca import CA_CERT_FILE
from meridian.snapshot import RoutingSnapshot
from region_agent.agent import RegionAgent
from region_agent.gpus import SimulatedGpuSource
from region_agent.supervisor import WorkerSpec, WorkerStat
from region_agent.tls import AgentTLS

# an admin token in every ``make_registry`` database (replicas started by ``replica_command``
# accept it; stored up front, as concurrent replicas must not each add one)
REPLICA_TOKEN = "replica-test-admin-token"
REPLICA_AUTH = {"authorization": f"Bearer {REPLICA_TOKEN}"}


@dataclass(frozen=True)
class FleetTLS:
    """A fleet CA for replica processes (``--tls-dir``: the admin API on HTTPS, agents on
    mutual TLS after enrolling) and for the clients and in-process agents of the test."""

    ca_dir: Path

    @classmethod
    def create(cls, directory: Path) -> FleetTLS:
        CertificateAuthority.create("test fleet CA").save(directory)
        return cls(directory)

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / CA_CERT_FILE

    def trust(self) -> ssl.SSLContext:
        """What an HTTPS client of a replica verifies it with."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def agent(self, enroll_ports: Sequence[int]) -> AgentTLS:
        """An agent's TLS: the fleet CA and the replicas' enrollment ports."""
        return AgentTLS(self.ca_file.read_bytes(), [f"127.0.0.1:{p}" for p in enroll_ports])


def replica_command(
    db: str,
    etcd: str,
    *,
    http_port: int,
    grpc_port: int,
    data_dir: str,
    options: Sequence[str] = (),
    tls: FleetTLS | None = None,
    enroll_port: int = 0,
) -> tuple[list[str], dict[str, str]]:
    """``meridian control-plane`` as one HA replica on ``db`` (made by ``make_registry``) and
    etcd: its argv and environment (the schema and ``REPLICA_TOKEN`` are there already).
    With ``tls``, HTTPS and mutual-TLS agents enrolling on ``enroll_port``; without,
    plaintext, said explicitly (``--insecure``)."""
    argv = [
        sys.executable, "-m", "meridian", "control-plane", "--database-url", db,
        "--coordination", f"etcd://{etcd}", "--port", str(http_port),
        "--grpc-port", str(grpc_port), "--data-dir", data_dir, "--log-level", "warning",
        *(["--tls-dir", str(tls.ca_dir)] if tls is not None else ["--insecure"]),
        *options,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "MERIDIAN_MIGRATE_ON_START": "false",
    }
    if tls is not None:
        env["MERIDIAN_AGENT_ENROLL_PORT"] = str(enroll_port)
    return argv, env


REGIONS = {
    # name: (lat, lon, credential, status)
    "eu-west": (53.35, -6.26, "cred-eu-west", RegionStatus.ACTIVE),
    "us-east": (39.04, -77.49, "cred-us-east", RegionStatus.ACTIVE),
    "ap-south": (19.08, 72.88, "cred-ap-south", RegionStatus.ACTIVE),
    "old-dc": (50.11, 8.68, "cred-old-dc", RegionStatus.DISABLED),
}


def make_registry(url: str) -> sessionmaker[Session]:
    """Create the schema and the test regions, one deployment in eu-west and us-east."""
    engine = sa.create_engine(url)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    with sessions.begin() as s:
        regions = {}
        for name, (lat, lon, cred, status) in REGIONS.items():
            regions[name] = Region(
                name=name,
                lat=lat,
                lon=lon,
                gpu_type="H100",
                gpu_count=4,
                status=status,
                agent_credential_hash=credential_hash(cred),
            )
            s.add(regions[name])
        s.add(ApiToken(name="replicas", token_hash=credential_hash(REPLICA_TOKEN), scopes="admin"))
        model = Model(name="resnet")
        version = ModelVersion(
            model=model,
            version="1",
            format=ModelFormat.ONNX,
            artifact_uri="http://127.0.0.1:1/artifacts/resnet-1.onnx",
            artifact_sha256="ab" * 32,
        )
        s.add_all([model, version])
        for name in ("eu-west", "us-east"):
            s.add(
                Deployment(
                    model_version=version,
                    region=regions[name],
                    min_replicas=2,
                    max_replicas=4,
                    traffic_weight=1.0,
                )
            )
    return sessions


def fast_settings(**overrides: object) -> FleetSettings:
    base: dict[str, object] = {
        "report_interval_s": 0.2,
        "tick_s": 0.02,
        "debounce_s": 0.02,
        "load_interval_s": 0.5,
        "registry_refresh_s": 1.0,
        "summary_ttl_s": 2.0,
        "leader_ttl_s": 2.0,
    }
    base.update(overrides)
    return FleetSettings(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running_fleet(
    sessions: sessionmaker[Session], coord: Coordination, settings: FleetSettings
) -> AsyncIterator[FleetRuntime]:
    runtime = FleetRuntime.with_sql(settings, sessions, coord)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(grace_s=0.2)


@dataclass
class StaticSupervisor:
    """Workers as the test says they are (a seam the project owns): one per GPU."""

    gpus: int
    models: tuple[str, ...] = ("resnet:1",)
    applied: list[list[WorkerSpec]] = field(default_factory=list)
    ready: bool = True

    async def start(self) -> None:
        pass

    async def apply(self, desired: Sequence[WorkerSpec]) -> None:
        self.applied.append(list(desired))

    def statuses(self) -> list[WorkerStat]:
        return [
            WorkerStat(
                worker_id=f"w{i}",
                endpoint=f"http://127.0.0.1:{9000 + i}",
                grpc_endpoint=f"127.0.0.1:{9100 + i}",
                models=self.models,
                ready=self.ready,
                queue_depth=i,
                throughput_rps=10.0,
                capacity_rps=50.0,
                latency_p50_ms=5.0,
                latency_p99_ms=9.0,
                gpu_indices=(i,),
            )
            for i in range(self.gpus)
        ]

    async def close(self) -> None:
        pass


@dataclass
class RunningAgent:
    agent: RegionAgent
    gpus: SimulatedGpuSource
    supervisor: StaticSupervisor
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def start_agent(
    addresses: Sequence[str],
    region: str,
    *,
    gpus: int = 4,
    credential: str | None = None,
    tls: AgentTLS | None = None,
) -> RunningAgent:
    source = SimulatedGpuSource(gpus, "H100", seed=hash(region) & 0xFFFF)
    supervisor = StaticSupervisor(gpus)
    agent = RegionAgent(
        addresses,
        region=region,
        credential=credential if credential is not None else REGIONS[region][2],
        gpus=source,
        supervisor=supervisor,
        report_interval_s=0.2,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        tls=tls,
    )
    return RunningAgent(agent, source, supervisor, asyncio.create_task(agent.run()))


async def wait_snapshot(
    runtime_feed_current: Callable[[], RoutingSnapshot | None],
    predicate: Callable[[RoutingSnapshot], bool],
    *,
    timeout: float,
) -> tuple[RoutingSnapshot, float]:
    """Wait for a snapshot satisfying ``predicate``; returns it and the seconds it took."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        snapshot = runtime_feed_current()
        if snapshot is not None and predicate(snapshot):
            return snapshot, time.monotonic() - start
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no snapshot met the condition within {timeout}s: {snapshot}")
        await asyncio.sleep(0.01)
