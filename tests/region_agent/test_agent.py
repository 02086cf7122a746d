"""The region agent: GPU sources, backoff, several control-plane addresses, the CLI end to end."""

from __future__ import annotations

import asyncio
import random
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control_plane.fleet.service import FleetRuntime
from meridian.coordination import InProcessCoordination
from meridian.net import free_port
from meridian.snapshot import HealthState
from meridian.waiting import wait_until_async
from region_agent.agent import RegionAgent, build_report
from region_agent.gpus import (
    Fault,
    GpuUnavailable,
    NvmlGpuSource,
    SimulatedGpuSource,
    open_gpu_source,
)
from tests.fleet_support import (
    REGIONS,
    StaticSupervisor,
    fast_settings,
    make_registry,
    running_fleet,
    start_agent,
    wait_snapshot,
)

ROOT = Path(__file__).resolve().parents[2]
STANDIN = Path(__file__).with_name("standin_worker.py")


def test_simulated_gpus_report_injected_faults_once_and_remember_them() -> None:
    gpus = SimulatedGpuSource(3, "A100", seed=1)
    assert [g.memory_total_bytes for g in gpus.inventory()] == [80 * 1024**3] * 3
    gpus.inject(0, Fault.XID79)
    gpus.inject(1, Fault.ECC_UNCORRECTABLE)
    gpus.inject(2, Fault.OVERHEAT)
    first = gpus.sample()
    assert [x.code for x in first[0].xid_events] == [79] and first[0].utilization == 0
    assert first[1].ecc_uncorrected == 1 and first[1].recent_xids == (48,)
    assert first[2].temperature_c >= 90 and first[2].throttle_reasons == ("hw_thermal",)
    second = gpus.sample()
    assert second[0].xid_events == () and second[0].recent_xids == (79,)  # sticky until reset
    gpus.clear(0)
    assert gpus.sample()[0].recent_xids == ()
    report = build_report(7, second, StaticSupervisor(1).statuses())
    assert report.seq == 7 and list(report.gpus[0].recent_xids) == [79]
    assert report.workers[0].worker_id == "w0" and list(report.workers[0].gpu_indices) == [0]


def test_without_a_gpu_and_without_simulation_the_error_says_what_to_do() -> None:
    try:
        source = NvmlGpuSource()
    except GpuUnavailable:
        with pytest.raises(GpuUnavailable, match="--simulate-gpus"):
            open_gpu_source(None)
    else:  # a GPU host: NVML reports real devices
        assert source.inventory()
        assert len(source.sample()) == len(source.inventory())
        source.close()
    assert isinstance(open_gpu_source(2, "L4"), SimulatedGpuSource)


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    agent = RegionAgent(
        ["127.0.0.1:1"],
        region="r",
        credential="c",
        gpus=SimulatedGpuSource(1),
        supervisor=StaticSupervisor(1),
        backoff_base_s=0.1,
        backoff_cap_s=2.0,
        rng=random.Random(7),
    )
    for attempt in range(8):
        bound = min(2.0, 0.1 * 2**attempt)
        delays = [agent.backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound * 0.8  # spread over the whole range
        assert min(delays) < bound * 0.2


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[FleetRuntime]:
    sessions = make_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    coord = InProcessCoordination()
    try:
        async with running_fleet(sessions, coord, fast_settings()) as runtime:
            await wait_until_async(
                lambda: runtime.feed.current is not None, timeout=5, what="first snapshot"
            )
            yield runtime
    finally:
        await coord.close()


async def test_agent_tries_each_address_until_one_answers(fleet: FleetRuntime) -> None:
    dead = f"127.0.0.1:{free_port()}"
    agent = start_agent([dead, f"127.0.0.1:{fleet.grpc_port}"], "ap-south")
    try:
        await wait_until_async(agent.agent.connected.is_set, timeout=5, what="connected")
        assert agent.agent.connected_to == f"127.0.0.1:{fleet.grpc_port}"
        assert agent.agent.sessions == 1
    finally:
        await agent.stop()


async def test_refused_agent_keeps_retrying_and_says_why(fleet: FleetRuntime) -> None:
    agent = start_agent([f"127.0.0.1:{fleet.grpc_port}"], "eu-west", credential="wrong")
    try:
        await wait_until_async(lambda: fleet.servicer.rejected >= 2, timeout=5, what="retries")
        assert "UNAUTHENTICATED" in agent.agent.last_error
        assert not agent.agent.connected.is_set()
    finally:
        await agent.stop()


@pytest.mark.slow
async def test_agent_cli_runs_directed_workers_and_reports_them(
    fleet: FleetRuntime, tmp_path: Path
) -> None:
    """``meridian agent`` as a process: directives → stand-in workers → scraped → snapshot."""
    credential = tmp_path / "credential"
    credential.write_text(REGIONS["eu-west"][2] + "\n")
    template = ["--port", "{port}", "--model", "{model}", "--version", "{version}"]
    worker = shlex.join([sys.executable, str(STANDIN), *template])
    argv = [
        sys.executable, "-m", "meridian", "agent",
        "--control-plane", f"127.0.0.1:{free_port()},127.0.0.1:{fleet.grpc_port}",
        "--region", "eu-west", "--credential-file", str(credential),
        "--simulate-gpus", "2", "--gpu-type", "L4",
        "--worker-command", worker, "--log-level", "WARNING",
        "--state-dir", str(tmp_path / "agent"),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(*argv, cwd=ROOT)
    try:

        def two_ready_workers(s):  # type: ignore[no-untyped-def]
            region = s.region("eu-west")
            return (
                region is not None
                and region.state == HealthState.HEALTHY
                and sum(w.state == HealthState.HEALTHY for w in region.workers) == 2
            )

        snap, _ = await wait_snapshot(lambda: fleet.feed.current, two_ready_workers, timeout=20)
        region = snap.region("eu-west")
        assert region is not None and region.serves("resnet") and region.gpu_count == 2
        assert {w.models for w in region.workers} == {("resnet:1",)}
        assert region.capacity_rps == pytest.approx(80.0)  # 2 x the stand-in's 40 rps
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                assert await process.wait() == 0  # it stopped its workers and exited cleanly
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
