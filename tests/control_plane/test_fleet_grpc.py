"""Agents and the control plane over real gRPC sockets, on in-process coordination and etcd."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.models import Region
from control_plane.fleet.service import FleetRuntime, nudge_registry
from meridian.coordination import Coordination, InProcessCoordination, open_coordination
from meridian.snapshot import HealthState, RoutingSnapshot
from meridian.waiting import wait_until_async
from proto import region_pb2 as pb
from proto import region_pb2_grpc as pb_grpc
from region_agent.gpus import Fault
from tests.fleet_support import (
    REGIONS,
    fast_settings,
    make_registry,
    running_fleet,
    start_agent,
    wait_snapshot,
)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return make_registry(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture(params=["memory", "etcd"])
async def fleet(
    request: pytest.FixtureRequest, sessions: sessionmaker[Session]
) -> AsyncIterator[FleetRuntime]:
    """The same runtime on both coordination backends (etcd: a fresh key namespace)."""
    if request.param == "memory":
        coord: Coordination = InProcessCoordination()
    else:
        coord = open_coordination(f"etcd://{request.getfixturevalue('etcd_endpoint')}")
    settings = fast_settings(namespace=f"/test/fleet-{uuid.uuid4().hex[:8]}")
    try:
        async with running_fleet(sessions, coord, settings) as runtime:
            await wait_until_async(
                lambda: runtime.leadership.is_leader and runtime.feed.current is not None,
                timeout=5,
                what="leadership and a first snapshot",
            )
            yield runtime
    finally:
        await coord.close()


def address(runtime: FleetRuntime) -> str:
    return f"127.0.0.1:{runtime.grpc_port}"


def region_state(name: str, state: HealthState):  # type: ignore[no-untyped-def]
    def check(s: RoutingSnapshot) -> bool:
        r = s.region(name)
        return r is not None and r.state == state

    return check


async def test_agent_registers_gets_directives_and_region_turns_healthy(
    fleet: FleetRuntime,
) -> None:
    assert fleet.feed.current is not None
    before = fleet.feed.current.region("eu-west")
    assert before is not None and before.state == HealthState.DOWN  # no agent yet
    agent = start_agent([address(fleet)], "eu-west")
    try:
        snap, _ = await wait_snapshot(
            lambda: fleet.feed.current, region_state("eu-west", HealthState.HEALTHY), timeout=5
        )
        region = snap.region("eu-west")
        assert region is not None
        assert [w.worker_id for w in region.workers] == ["w0", "w1", "w2", "w3"]
        assert region.healthy_gpus == 4 and region.serves("resnet")
        assert region.capacity_rps == pytest.approx(200.0)
        assert ("resnet", "1", "eu-west") in {
            (d.model, d.version, d.region) for d in snap.deployments
        }
        # the leader's directives reached the agent's supervisor: 2 replicas of resnet:1
        await wait_until_async(lambda: agent.supervisor.applied, timeout=5, what="directives")
        spec = agent.supervisor.applied[-1][0]
        assert (spec.model, spec.version, spec.replicas) == ("resnet", "1", 2)
        assert spec.artifact_sha256 == "ab" * 32
        assert agent.agent.report_interval_s == pytest.approx(0.2)
        assert snap.version > 1
    finally:
        await agent.stop()


async def test_xid_on_one_gpu_takes_its_worker_down_and_degrades_the_region(
    fleet: FleetRuntime,
) -> None:
    agent = start_agent([address(fleet)], "us-east")
    try:
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("us-east", HealthState.HEALTHY), timeout=5
        )
        agent.gpus.inject(2, Fault.XID79)
        agent.agent.report_now()
        snap, took = await wait_snapshot(
            lambda: fleet.feed.current, region_state("us-east", HealthState.DEGRADED), timeout=3
        )
        assert took <= 1.5
        region = snap.region("us-east")
        assert region is not None
        states = {w.worker_id: w.state for w in region.workers}
        assert states == {
            "w0": HealthState.HEALTHY,
            "w1": HealthState.HEALTHY,
            "w2": HealthState.DOWN,
            "w3": HealthState.HEALTHY,
        }
        assert region.healthy_gpus == 3
        assert region.serves("resnet")  # degraded regions keep serving on healthy workers
        summary = fleet.fleet_view.summary("us-east")
        assert summary is not None and "XID 79" in summary.reason

        # the remaining GPUs fail too (ECC, hung, XID): the region leaves routing
        agent.gpus.inject(0, Fault.ECC_UNCORRECTABLE)
        agent.gpus.inject(1, Fault.HUNG)
        agent.gpus.inject(3, Fault.XID79)
        agent.agent.report_now()
        start = time.monotonic()
        snap, _ = await wait_snapshot(
            lambda: fleet.feed.current, region_state("us-east", HealthState.DOWN), timeout=3
        )
        assert time.monotonic() - start <= 1.5
        region = snap.region("us-east")
        assert region is not None and not region.state.routable and region.healthy_gpus == 0
        assert "us-east" not in {r.name for r in snap.routable_regions()}
    finally:
        await agent.stop()


async def test_overheating_gpu_degrades_but_keeps_serving(fleet: FleetRuntime) -> None:
    agent = start_agent([address(fleet)], "eu-west", gpus=2)
    try:
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("eu-west", HealthState.HEALTHY), timeout=5
        )
        agent.gpus.inject(0, Fault.OVERHEAT)
        agent.agent.report_now()
        snap, _ = await wait_snapshot(
            lambda: fleet.feed.current, region_state("eu-west", HealthState.DEGRADED), timeout=3
        )
        region = snap.region("eu-west")
        assert region is not None
        assert {w.worker_id: w.state for w in region.workers} == {
            "w0": HealthState.DEGRADED,
            "w1": HealthState.HEALTHY,
        }
        assert region.healthy_gpus == 2
    finally:
        await agent.stop()


async def test_stopped_heartbeats_take_the_region_down_within_the_deadline(
    fleet: FleetRuntime,
) -> None:
    """A silent agent whose stream stays open: the heartbeat rule, not the disconnect."""
    async with grpc.aio.insecure_channel(address(fleet)) as channel:
        call = pb_grpc.RegionServiceStub(channel).Connect()
        await call.write(_register("eu-west"))
        await call.read()  # directives
        last_report = time.monotonic()  # the server receives the report after this
        await call.write(pb.AgentMessage(report=_report(gpus=2)))
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("eu-west", HealthState.HEALTHY), timeout=5
        )
        snap, _ = await wait_snapshot(
            lambda: fleet.feed.current, region_state("eu-west", HealthState.DOWN), timeout=5
        )
        took = time.monotonic() - last_report
        heartbeat = fleet.policy.config.heartbeat_timeout_s  # 3 x 0.2 s
        assert heartbeat <= took <= heartbeat + 1.0
        region = snap.region("eu-west")
        assert region is not None
        assert all(w.state == HealthState.DOWN for w in region.workers)
        call.cancel()


async def test_agent_that_goes_away_leaves_routing(fleet: FleetRuntime) -> None:
    agent = start_agent([address(fleet)], "ap-south")
    await wait_snapshot(
        lambda: fleet.feed.current, region_state("ap-south", HealthState.HEALTHY), timeout=5
    )
    await agent.stop()
    stopped = time.monotonic()
    snap, _ = await wait_snapshot(
        lambda: fleet.feed.current, region_state("ap-south", HealthState.DOWN), timeout=5
    )
    assert time.monotonic() - stopped <= fleet.policy.config.heartbeat_timeout_s + 1.0
    region = snap.region("ap-south")
    assert region is not None and region.workers == ()


def _register(region: str, credential: str | None = None, gpus: int = 2) -> pb.AgentMessage:
    return pb.AgentMessage(
        register=pb.Register(
            region=region,
            credential=credential if credential is not None else REGIONS[region][2],
            agent_version="test",
            gpus=[pb.GpuInfo(index=i, name="H100") for i in range(gpus)],
        )
    )


def _report(gpus: int = 2, **gpu_fields: object) -> pb.Report:
    report = pb.Report(seq=1)
    for i in range(gpus):
        report.gpus.append(
            pb.GpuStatus(**{"index": i, "utilization": 50, "temperature_c": 50, **gpu_fields})
        )
        report.workers.append(
            pb.WorkerStatus(
                worker_id=f"w{i}",
                endpoint=f"http://127.0.0.1:{9000 + i}",
                models=["resnet:1"],
                ready=True,
                gpu_indices=[i],
            )
        )
    return report


async def _refused(runtime: FleetRuntime, *messages: pb.AgentMessage) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(address(runtime)) as channel:
        call = pb_grpc.RegionServiceStub(channel).Connect()
        for message in messages:
            await call.write(message)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        return info.value


async def test_bad_credentials_are_refused_with_a_clear_status(fleet: FleetRuntime) -> None:
    wrong = await _refused(fleet, _register("eu-west", credential="guess"))
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "wrong or revoked agent credential" in (wrong.details() or "")

    unknown = await _refused(fleet, _register("mars-1", credential="x"))
    assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED

    swapped = await _refused(fleet, _register("eu-west", credential=REGIONS["us-east"][2]))
    assert swapped.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "belongs to region 'us-east'" in (swapped.details() or "")

    disabled = await _refused(fleet, _register("old-dc"))
    assert disabled.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "disabled" in (disabled.details() or "")

    no_register = await _refused(fleet, pb.AgentMessage(report=_report()))
    assert no_register.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fleet.servicer.streams == 0


async def test_malformed_reports_end_only_their_own_stream(fleet: FleetRuntime) -> None:
    good = start_agent([address(fleet)], "us-east")
    try:
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("us-east", HealthState.HEALTHY), timeout=5
        )
        sent_before = good.agent.reports_sent
        cases = [
            (_report(utilization=150), "utilization must be 0..100"),
            (_report(gpus=3), "GPU 2 is not in the registered inventory"),
            (_report(memory_used_bytes=10, memory_total_bytes=5), "exceeds memory_total_bytes"),
        ]
        for report, message in cases:
            error = await _refused(fleet, _register("eu-west"), pb.AgentMessage(report=report))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (error.details() or "")
        twice = await _refused(fleet, _register("eu-west"), _register("eu-west"))
        assert twice.code() == grpc.StatusCode.INVALID_ARGUMENT

        # bytes that are not a protobuf message at all
        async with grpc.aio.insecure_channel(address(fleet)) as channel:
            raw = channel.stream_stream(
                "/meridian.region.v1.RegionService/Connect",
                request_serializer=lambda b: b,
                response_deserializer=pb.ControlMessage.FromString,
            )
            call = raw()
            await call.write(b"\xff\xff\xff\xff")
            with pytest.raises(grpc.aio.AioRpcError) as garbage:
                async for _ in call:
                    pass
            assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not an AgentMessage" in (garbage.value.details() or "")

        # the good agent's stream was never disturbed: same session, reports still flowing
        await wait_until_async(
            lambda: good.agent.reports_sent >= sent_before + 3, timeout=3, what="more reports"
        )
        assert good.agent.sessions == 1
        snap = fleet.feed.current
        assert snap is not None and snap.region("us-east").state == HealthState.HEALTHY  # type: ignore[union-attr]
    finally:
        await good.stop()


async def test_agent_reconnects_after_a_control_plane_restart_and_resends_state(
    tmp_path: Path,
) -> None:
    sessions = make_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    coord = InProcessCoordination()
    settings = fast_settings()
    try:
        async with running_fleet(sessions, coord, settings) as first:
            port = first.grpc_port
            agent = start_agent([f"127.0.0.1:{port}"], "eu-west")
            await wait_snapshot(
                lambda: first.feed.current, region_state("eu-west", HealthState.HEALTHY), timeout=15
            )
        # the control plane is gone; the agent keeps its workers (no new directives)
        applied = len(agent.supervisor.applied)
        await wait_until_async(
            lambda: not agent.agent.connected.is_set(),
            timeout=5,
            what="the agent sees its control plane gone",
        )
        async with running_fleet(sessions, coord, fast_settings(grpc_port=port)) as second:
            await asyncio.wait_for(agent.agent.connected.wait(), 15)
            snap, _ = await wait_snapshot(
                lambda: second.feed.current,
                region_state("eu-west", HealthState.HEALTHY),
                timeout=15,
            )
            assert agent.agent.sessions == 2
            assert len(agent.supervisor.applied) == applied  # same directives: nothing re-applied
            assert snap.region("eu-west").workers  # type: ignore[union-attr]
        await agent.stop()
    finally:
        await coord.close()


async def test_live_stream_ends_when_its_region_is_disabled(
    fleet: FleetRuntime, sessions: sessionmaker[Session]
) -> None:
    agent = start_agent([address(fleet)], "ap-south")
    try:
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("ap-south", HealthState.HEALTHY), timeout=5
        )
        assert await fleet.servicer.revalidate() == 0  # still accepted: nothing ends
        assert agent.agent.connected.is_set()
        with sessions.begin() as s:
            s.execute(sa.update(Region).where(Region.name == "ap-south").values(status="disabled"))
        assert await fleet.servicer.revalidate() == 1
        await wait_until_async(
            lambda: "PERMISSION_DENIED" in agent.agent.last_error, timeout=3, what="revoked"
        )
        assert "disabled" in agent.agent.last_error
        await wait_until_async(lambda: fleet.servicer.streams == 0, timeout=3, what="stream gone")
    finally:
        await agent.stop()


async def test_an_admin_write_nudge_ends_a_revoked_stream_at_once(
    fleet: FleetRuntime, sessions: sessionmaker[Session]
) -> None:
    assert fleet.settings.credential_recheck_s >= 30  # the periodic check is not what ends it
    agent = start_agent([address(fleet)], "us-east")
    try:
        await wait_snapshot(
            lambda: fleet.feed.current, region_state("us-east", HealthState.HEALTHY), timeout=5
        )
        with sessions.begin() as s:
            s.execute(sa.update(Region).where(Region.name == "us-east").values(status="disabled"))
        await nudge_registry(fleet.coord, fleet.settings.namespace)  # what every admin write does
        await wait_until_async(
            lambda: "PERMISSION_DENIED" in agent.agent.last_error, timeout=5, what="stream ended"
        )
        await wait_until_async(lambda: fleet.servicer.streams == 0, timeout=3, what="stream gone")
    finally:
        await agent.stop()
