"""High availability with real processes: two replicas on PostgreSQL + etcd; kill the leader.
The replicas serve HTTPS and the agent streams over mutual TLS, from a fleet CA."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.health.snapshots import SnapshotFeed
from meridian.coordination import open_coordination
from meridian.net import free_port
from meridian.snapshot import HealthState
from meridian.waiting import wait_until, wait_until_async
from region_agent.gpus import Fault
from tests.fleet_support import (
    REPLICA_AUTH,
    FleetTLS,
    make_registry,
    replica_command,
    start_agent,
    wait_snapshot,
)

pytestmark = [pytest.mark.slow, pytest.mark.etcd, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(
        self, name: str, db: str, etcd: str, namespace: str, log: Path, tls: FleetTLS
    ) -> None:
        self.name = name
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.enroll_port = free_port()
        self.log = log
        self._out = log.open("wb")
        self._trust = tls.trust()
        argv, env = replica_command(
            db, etcd, http_port=self.http_port, grpc_port=self.grpc_port,
            data_dir=str(log.parent / name), tls=tls, enroll_port=self.enroll_port,
            options=[
                "--fleet-namespace", namespace, "--replica-id", name, "--report-interval", "0.2",
                "--leader-ttl", "2", "--summary-ttl", "2",
            ],
        )  # fmt: skip
        self.process = subprocess.Popen(
            argv, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT, env=env
        )

    def status(self) -> dict[str, object] | None:
        try:
            r = httpx.get(
                f"https://127.0.0.1:{self.http_port}/v1/fleet/status",
                headers=REPLICA_AUTH,
                timeout=0.5,
                verify=self._trust,
            )
            return dict(r.json()) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def kill(self, how: signal.Signals = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            self.process.send_signal(how)
            self.process.wait(10)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._out.close()


@pytest.fixture
def tls(tmp_path: Path) -> FleetTLS:
    return FleetTLS.create(tmp_path / "ca")


@pytest.fixture
def replicas(
    postgres_url: str, etcd_endpoint: str, tmp_path: Path, tls: FleetTLS
) -> Iterator[tuple[list[Replica], str]]:
    make_registry(postgres_url).kw["bind"].dispose()
    namespace = f"/test/failover-{uuid.uuid4().hex[:8]}"
    started: list[Replica] = []
    try:
        for name in ("cp-a", "cp-b"):  # both start at once; whichever wins the election leads
            log = tmp_path / f"{name}.log"
            started.append(Replica(name, postgres_url, etcd_endpoint, namespace, log, tls))
        wait_until(
            lambda: all(r.status() is not None for r in started), timeout=30, what="both serve"
        )
        wait_until(
            lambda: sum(bool((r.status() or {}).get("leader")) for r in started) == 1,
            timeout=10,
            what="one leader",
        )
        started.sort(key=lambda r: not (r.status() or {}).get("leader"))  # leader first
        yield started, namespace
    finally:
        for replica in started:
            replica.close()


@pytest.mark.parametrize(
    ("how", "within"),
    [
        (signal.SIGKILL, 5.0),  # a crash: the follower waits for the leader's lease to expire
        (signal.SIGTERM, 1.5),  # an orderly stop: the leader resigns, the follower leads at once
    ],
    ids=["crash", "orderly-stop"],
)
async def test_leader_process_killed_follower_takes_over_within_seconds(
    replicas: tuple[list[Replica], str],
    etcd_endpoint: str,
    tls: FleetTLS,
    how: signal.Signals,
    within: float,
) -> None:
    (leader, follower), namespace = replicas
    assert (follower.status() or {}).get("leader") is False
    coord = open_coordination(f"etcd://{etcd_endpoint}")
    feed = SnapshotFeed(coord, key=f"{namespace}/routing/snapshot")
    follow = asyncio.create_task(feed.run())
    # the agent talks to the follower: its reports reach the leader through etcd
    agent = start_agent(
        [f"127.0.0.1:{follower.grpc_port}"], "eu-west", tls=tls.agent([follower.enroll_port])
    )
    try:
        healthy = lambda s: s.region("eu-west").state == HealthState.HEALTHY  # noqa: E731
        await wait_snapshot(lambda: feed.current, healthy, timeout=10)
        assert agent.agent.certificate is not None  # enrolled: its stream is mutual TLS
        before = feed.version

        killed = time.monotonic()
        leader.kill(how)
        await wait_until_async(
            lambda: (follower.status() or {}).get("leader"), timeout=10, what="takeover"
        )
        takeover = time.monotonic() - killed
        assert takeover < within, f"takeover took {takeover:.2f}s after {how.name}"

        # the new leader publishes: a fault on the agent shows in a newer snapshot
        agent.gpus.inject(1, Fault.XID79)
        agent.agent.report_now()
        degraded = lambda s: s.region("eu-west").state == HealthState.DEGRADED  # noqa: E731
        snap, _ = await wait_snapshot(lambda: feed.current, degraded, timeout=5)
        assert snap.version > before
        assert time.monotonic() - killed < 7.0
        assert agent.agent.sessions == 1  # the agent's stream to the follower never broke
    finally:
        await agent.stop()
        follow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follow
        await coord.close()
