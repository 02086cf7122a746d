"""A leader that has just arrived keeps silent regions' last states while agents reconnect."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from control_plane.health.grace import ReconnectGrace
from control_plane.health.inventory import RegionRecord, RegistryView
from control_plane.health.snapshots import SnapshotFeed, SnapshotPublisher, build_snapshot
from control_plane.health.summary import RegionSummary, WorkerSummary
from meridian.coordination import (
    Coordination,
    EventKind,
    InProcessCoordination,
    open_coordination,
)
from meridian.net import free_port
from meridian.snapshot import HealthState, RoutingSnapshot
from meridian.waiting import wait_until, wait_until_async
from region_agent.agent import RegionAgent
from region_agent.gpus import SimulatedGpuSource
from region_agent.tls import AgentTLS
from tests.fleet_support import (
    REGIONS,
    REPLICA_AUTH,
    FleetTLS,
    StaticSupervisor,
    make_registry,
    replica_command,
)
from tests.tasks import running

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = RegistryView((RegionRecord("eu", 53.3, -6.3), RegionRecord("us", 39.0, -77.5)))


def _summary(region: str, state: HealthState = HealthState.HEALTHY) -> RegionSummary:
    worker = WorkerSummary(f"{region}-w0", "http://h:1", HealthState.HEALTHY, models=("m:1",),
                           capacity_rps=20.0)  # fmt: skip
    return RegionSummary(region=region, replica="a", state=state, last_report_at=1.0,
                         workers=(worker,))  # fmt: skip


def test_grace_carries_the_previous_regions_until_it_ends() -> None:
    previous = build_snapshot(7, REGISTRY, {"eu": _summary("eu"), "us": _summary("us")},
                              generated_at=0.0)  # fmt: skip
    grace = ReconnectGrace(5.0)
    assert grace.carried(0.0) == {}
    grace.begin(100.0, previous)
    carried = grace.carried(101.0)
    # us has reported again (degraded), eu is still silent: eu keeps its last view
    snap = build_snapshot(8, REGISTRY, {"us": _summary("us", HealthState.DEGRADED)},
                          generated_at=0.0, carried=carried)  # fmt: skip
    assert snap.region("eu").state == HealthState.HEALTHY  # type: ignore[union-attr]
    assert snap.region("eu").workers == previous.region("eu").workers  # type: ignore[union-attr]
    assert snap.region("us").state == HealthState.DEGRADED  # type: ignore[union-attr]
    # an agent that has registered but not reported yet is still silent
    registered = RegionSummary(region="eu", replica="b", state=HealthState.DOWN)
    snap = build_snapshot(8, REGISTRY, {"eu": registered}, generated_at=0.0, carried=carried)
    assert snap.region("eu").state == HealthState.HEALTHY  # type: ignore[union-attr]
    # the grace is over: a region still silent is down
    assert grace.carried(105.0) == {}
    late = build_snapshot(9, REGISTRY, {}, generated_at=0.0, carried=grace.carried(105.0))
    assert all(r.state == HealthState.DOWN for r in late.regions)
    # an operator's word still counts for a carried region
    draining = RegistryView((RegionRecord("eu", 53.3, -6.3, status="draining"),))
    grace.begin(200.0, previous)
    held = build_snapshot(10, draining, {}, generated_at=0.0, carried=grace.carried(200.0))
    assert held.region("eu").state == HealthState.DRAINING  # type: ignore[union-attr]
    ReconnectGrace(0.0).begin(0.0, previous)  # no grace configured: nothing carried


async def test_a_new_leader_publishes_no_region_down_before_the_grace_ends() -> None:
    coord = InProcessCoordination()
    previous = build_snapshot(4, REGISTRY, {"eu": _summary("eu"), "us": _summary("us")},
                              generated_at=0.0)  # fmt: skip
    await coord.put("/meridian/routing/snapshot", previous.to_json())
    summaries: dict[str, RegionSummary] = {}  # the store lost every summary in the outage
    publisher: SnapshotPublisher

    def build(version: int) -> RoutingSnapshot:
        carried = publisher.grace.carried(time.monotonic())
        return build_snapshot(version, REGISTRY, summaries, generated_at=0.0, carried=carried)

    publisher = SnapshotPublisher(coord, build, debounce_s=0.01, grace_s=0.6)
    feed = SnapshotFeed(coord)
    seen: list[RoutingSnapshot] = []

    async def record() -> None:
        async with await coord.watch("/meridian/routing/snapshot") as events:
            async for event in events:
                if event.kind == EventKind.PUT:
                    seen.append(RoutingSnapshot.from_json(event.value))

    async with running(feed.run(), record()):
        async with running(publisher.run()):
            await wait_until_async(lambda: feed.version == 5, timeout=2, what="first")
            summaries["us"] = _summary("us", HealthState.DEGRADED)  # us reconnects
            publisher.mark()
            await wait_until_async(lambda: feed.version == 6, timeout=2, what="us back")
            # eu never reports: once the grace is over it is published down, unprompted
            await wait_until_async(lambda: feed.version == 7, timeout=3, what="grace end")
    states = [(s.version, s.region("eu").state, s.region("us").state) for s in seen]  # type: ignore[union-attr]
    assert states == [
        (5, HealthState.HEALTHY, HealthState.HEALTHY),
        (6, HealthState.HEALTHY, HealthState.DEGRADED),
        (7, HealthState.DOWN, HealthState.DEGRADED),
    ]
    await coord.close()


# --- real processes: two replicas on PostgreSQL + etcd, both killed and restarted -------------


class Replica:
    """``meridian control-plane`` on fixed ports, so agents find it again after a restart;
    HTTPS and mutual-TLS agents from the fleet CA ``tls``."""

    def __init__(
        self, name: str, db: str, etcd: str, namespace: str, log: Path, tls: FleetTLS
    ) -> None:
        self.name, self.db, self.etcd, self.namespace, self.log = name, db, etcd, namespace, log
        self.grpc_port, self.http_port, self.enroll_port = free_port(), free_port(), free_port()
        self.tls, self._trust = tls, tls.trust()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv, env = replica_command(
            self.db, self.etcd, http_port=self.http_port, grpc_port=self.grpc_port,
            data_dir=str(self.log.parent / self.name), tls=self.tls,
            enroll_port=self.enroll_port,
            options=[
                "--fleet-namespace", self.namespace, "--replica-id", self.name,
                "--report-interval", "0.2", "--leader-ttl", "2", "--summary-ttl", "1",
                "--reconnect-grace", "4",
            ],
        )  # fmt: skip
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env
            )

    def serving(self) -> bool:
        try:
            url = f"https://127.0.0.1:{self.http_port}/v1/fleet/status"
            r = httpx.get(url, headers=REPLICA_AUTH, timeout=0.5, verify=self._trust)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(how)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def replicas(postgres_url: str, etcd_endpoint: str, tmp_path: Path) -> Iterator[list[Replica]]:
    make_registry(postgres_url).kw["bind"].dispose()
    namespace = f"/test/grace-{uuid.uuid4().hex[:8]}"
    tls = FleetTLS.create(tmp_path / "ca")
    started = [
        Replica(name, postgres_url, etcd_endpoint, namespace, tmp_path / f"{name}.log", tls)
        for name in ("cp-a", "cp-b")
    ]
    try:
        for r in started:
            r.start()
        wait_until(lambda: all(r.serving() for r in started), timeout=30, what="both serve")
        yield started
    finally:
        for r in started:
            r.stop()


def _agent(
    addresses: list[str], region: str, tls: AgentTLS
) -> tuple[RegionAgent, asyncio.Task[None]]:
    agent = RegionAgent(
        addresses, region=region, credential=REGIONS[region][2],
        gpus=SimulatedGpuSource(2, "H100", seed=1), supervisor=StaticSupervisor(2),
        report_interval_s=0.2, backoff_base_s=0.2, backoff_cap_s=1.5, tls=tls,
    )  # fmt: skip
    return agent, asyncio.create_task(agent.run())


@pytest.mark.slow
@pytest.mark.etcd
@pytest.mark.postgres
async def test_a_control_plane_restarted_after_an_outage_never_publishes_the_fleet_down(
    replicas: list[Replica], etcd_endpoint: str
) -> None:
    namespace = replicas[0].namespace
    key = f"{namespace}/routing/snapshot"
    coord = open_coordination(f"etcd://{etcd_endpoint}")
    seen: list[RoutingSnapshot] = []

    async def record() -> None:
        while True:
            with contextlib.suppress(Exception):
                async with await coord.watch(key) as events:
                    async for event in events:
                        if event.kind == EventKind.PUT:
                            seen.append(RoutingSnapshot.from_json(event.value))
            await asyncio.sleep(0.1)

    def routable(snap: RoutingSnapshot, region: str) -> bool:
        view = snap.region(region)
        return view is not None and view.state.routable

    addresses = [f"127.0.0.1:{r.grpc_port}" for r in replicas]
    tls = replicas[0].tls.agent([r.enroll_port for r in replicas])
    agents = [_agent(addresses, region, tls) for region in ("eu-west", "us-east")]
    try:
        async with running(record()):
            both = lambda: bool(seen) and all(routable(seen[-1], n) for n in ("eu-west", "us-east"))  # noqa: E731
            await wait_until_async(both, timeout=20, what="both regions healthy")
            assert all(a.certificate is not None for a, _ in agents)  # streams on mutual TLS
            for r in replicas:
                r.stop(signal.SIGKILL)  # the whole control plane is gone
            before = seen[-1].version
            # the outage outlasts the summaries' leases: etcd forgets every region
            regions_prefix = f"{namespace}/fleet/regions/"
            await wait_until_async(
                lambda: _empty(coord, regions_prefix), timeout=15, what="summaries lapsed"
            )
            for r in replicas:
                r.start()
            restarted = time.monotonic()
            await wait_until_async(
                lambda: any(s.version > before for s in seen), timeout=30, what="a new leader"
            )
            # past the grace (4 s): the agents are back, both regions routable
            await wait_until_async(
                lambda: both() and time.monotonic() - restarted > 6.0, timeout=20, what="settled"
            )
            after = [s for s in seen if s.version > before]
            down = [(s.version, r.name) for s in after for r in s.regions
                    if r.name in ("eu-west", "us-east") and not r.state.routable]  # fmt: skip
            assert not down, f"published down after the restart: {down}"
    finally:
        for _, task in agents:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await coord.close()


async def _empty(coord: Coordination, prefix: str) -> bool:
    items, _ = await coord.get_prefix(prefix)
    return not items
