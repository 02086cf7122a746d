"""Health-plane ingestion: GPU reports/s, snapshot publication delay, SQL writes/s.

N simulated agents (many GPUs each) stream reports over loopback gRPC, from a
separate process, into the real ``RegionService`` of a :class:`FleetRuntime`
(embedded mode: SQLite registry, in-process coordination). Measured side by side
in one run:

- ``meridian``: the ledger assesses each report in memory; summaries are relayed
  at most once a second per region (state changes at once); region health is
  persisted by the periodic recorder (one transaction per flush, changed rows only).
- ``naive``: the same server, but every report is also written to SQL as it
  arrives (one transaction per report), as a store-everything design would.

Publication delay: a probe agent's report that changes its region's state
(XID 79 on every GPU, then recovery), timed until the new snapshot is seen
through a coordination watch, while the load runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.report import parse_args, record, table

TARGET_GPU_REPORTS_PER_S = 20_000  # the paced load for delays and SQL writes
GPUS_PER_AGENT = 64
WORKERS_PER_AGENT = 16


def _report(seq: int, gpus: int, fatal: bool = False) -> Any:
    from proto import region_pb2 as pb

    report = pb.Report(seq=seq, sent_at=time.time())
    for i in range(gpus):
        report.gpus.append(
            pb.GpuStatus(
                index=i,
                utilization=40 + (seq + i) % 50,
                memory_used_bytes=40 << 30,
                memory_total_bytes=80 << 30,
                temperature_c=55 + i % 10,
                power_w=350,
                ecc_corrected=i % 3,
                recent_xids=[79] if fatal else [],
            )
        )
    for w in range(min(WORKERS_PER_AGENT, gpus)):
        report.workers.append(
            pb.WorkerStatus(
                worker_id=f"w{w}",
                endpoint=f"http://10.0.0.1:{8000 + w}",
                models=["resnet:1"],
                ready=True,
                queue_depth=(seq + w) % 7,
                in_flight=w % 3,
                throughput_rps=100.0,
                capacity_rps=400.0,
                latency_p50_ms=4.0,
                latency_p99_ms=9.0,
                gpu_indices=[w * (gpus // WORKERS_PER_AGENT) + k for k in range(gpus // 16)],
            )
        )
    return report


def _register(region: str, gpus: int) -> Any:
    from proto import region_pb2 as pb

    return pb.AgentMessage(
        register=pb.Register(
            region=region,
            credential=f"cred-{region}",
            agent_version="bench",
            gpus=[pb.GpuInfo(index=i, name="H100") for i in range(gpus)],
        )
    )


# --- load generator (its own process) ---------------------------------------------------------


def _client_main(
    address: str, agents: int, seconds: float, rate: float, ready: Any, stop: Any
) -> None:
    asyncio.run(_clients(address, agents, seconds, rate, ready, stop))


async def _clients(
    address: str, agents: int, seconds: float, rate: float, ready: Any, stop: Any
) -> None:
    """``rate``: GPU reports/s offered in all (0: as fast as the server takes them)."""
    import grpc

    from proto import region_pb2 as pb
    from proto import region_pb2_grpc as pb_grpc

    # a few distinct reports per agent, built once: the server's cost is what is measured
    reports = [pb.AgentMessage(report=_report(s, GPUS_PER_AGENT)) for s in range(4)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RegionServiceStub(channel)
        calls = []
        for i in range(agents):
            call = stub.Connect()
            await call.write(_register(f"load-{i}", GPUS_PER_AGENT))
            await call.read()
            calls.append(call)
        ready.set()
        deadline = time.monotonic() + seconds

        period = agents * GPUS_PER_AGENT / rate if rate > 0 else 0.0

        async def pump(call: Any) -> None:
            n = 0
            start = time.monotonic()
            while time.monotonic() < deadline:
                await call.write(reports[n % 4])
                n += 1
                if n % 32 == 0 and stop.is_set():
                    break
                if period:  # paced: keep to the schedule, never sleeping to catch up
                    await asyncio.sleep(max(0.0, start + n * period - time.monotonic()))
            await call.done_writing()

        await asyncio.gather(*(pump(c) for c in calls))
        for call in calls:
            call.cancel()


# --- server side ------------------------------------------------------------------------------


async def _measure(
    mode: str, agents: int, seconds: float, workdir: Path, etcd: str | None = None
) -> dict[str, float]:
    import sqlalchemy as sa
    from sqlalchemy.orm import sessionmaker

    from control_plane.db.models import Base, Region
    from control_plane.fleet.service import FleetRuntime, FleetSettings
    from control_plane.fleet.store import FleetStore, credential_hash
    from control_plane.health.ledger import Change
    from control_plane.health.recorder import SqlHealthSink, region_health_table
    from meridian.coordination import InProcessCoordination, open_coordination
    from meridian.waiting import wait_until_async

    db = workdir / f"{mode}-{'etcd' if etcd else 'memory'}.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)
    metadata = sa.MetaData()
    health_table = region_health_table(metadata)
    naive_table = sa.Table(
        "naive_reports",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("region", sa.String(64)),
        sa.Column("at", sa.Float),
        sa.Column("report", sa.LargeBinary),
    )
    metadata.create_all(engine)
    sessions = sessionmaker(engine, expire_on_commit=False)
    names = [f"load-{i}" for i in range(agents)] + ["probe"]
    with sessions.begin() as s:
        for n in names:
            s.add(Region(name=n, lat=0, lon=0, agent_credential_hash=credential_hash(f"cred-{n}")))
    store = FleetStore(sessions)
    coord = open_coordination(f"etcd://{etcd}") if etcd else InProcessCoordination()
    sink = SqlHealthSink(engine, health_table)
    # long leases: a starved event loop (the naive mode) must not lose leadership mid-run
    settings = FleetSettings(
        report_interval_s=1.0,
        health_flush_s=1.0,
        leader_ttl_s=30,
        summary_ttl_s=30,
        namespace=f"/bench/health-{uuid.uuid4().hex[:8]}",
    )
    runtime = FleetRuntime(
        settings,
        coord,
        load_registry=store.load,
        check_credential=store.check_credential,
        health_sink=sink,
    )
    naive_writes = 0
    if mode == "naive":

        def write_every_report(region: str, _change: Change) -> None:
            nonlocal naive_writes
            summary = runtime.ledger.summary(region)
            with engine.begin() as conn:
                conn.execute(
                    naive_table.insert().values(
                        region=region, at=time.time(), report=summary.to_json() if summary else b""
                    )
                )
            naive_writes += 1

        runtime.ledger.add_listener(write_every_report)

    await runtime.start()
    address = f"127.0.0.1:{runtime.grpc_port}"
    await wait_until_async(
        lambda: runtime.leadership.is_leader and runtime.feed.current is not None,
        timeout=30,
        what="leadership",
    )

    try:
        # phase 1: flat out, for the ingestion ceiling
        async with _load(address, agents, seconds, 0.0):
            ledger = runtime.ledger
            gpu0, t0 = ledger.gpu_reports_ingested, time.monotonic()
            await asyncio.sleep(seconds - 1)  # the measurement window itself
            ceiling = (ledger.gpu_reports_ingested - gpu0) / (time.monotonic() - t0)
        # phase 2: paced at the target load, timing state changes through the watch
        async with _load(address, agents, seconds, TARGET_GPU_REPORTS_PER_S):
            gpu0, sql0, t0 = (
                ledger.gpu_reports_ingested,
                sink.writes + naive_writes,
                time.monotonic(),
            )
            delays, timeouts = await _probe(address, runtime.feed, until=t0 + seconds - 1)
            elapsed = time.monotonic() - t0
            paced = (ledger.gpu_reports_ingested - gpu0) / elapsed
            sql_writes = sink.writes + naive_writes - sql0
    finally:
        await runtime.stop(grace_s=0.2)
        await coord.close()
        engine.dispose()
    return {
        "gpu_reports_per_s": ceiling,
        "paced_gpu_reports_per_s": paced,
        "sql_writes_per_s": sql_writes / elapsed,
        "publish_delay_ms_p50": 1000 * statistics.median(delays) if delays else float("nan"),
        "publish_delay_ms_max": 1000 * max(delays) if delays else float("nan"),
        "probes": float(len(delays)),
        "probe_timeouts": float(timeouts),
    }


@contextlib.asynccontextmanager
async def _load(address: str, agents: int, seconds: float, rate: float) -> AsyncIterator[None]:
    """The load generator in its own process, streaming while the block runs."""
    from meridian.waiting import wait_until_async

    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    client = ctx.Process(
        target=_client_main, args=(address, agents, seconds + 1, rate, ready, stop)
    )
    client.start()
    try:
        await wait_until_async(ready.is_set, timeout=60, what="load generator ready")
        await asyncio.sleep(0.5)  # warm-up before measuring
        yield
    finally:
        stop.set()
        client.join(timeout=seconds + 10)
        if client.is_alive():
            client.kill()
            client.join()


async def _probe(address: str, feed: Any, *, until: float) -> tuple[list[float], int]:
    """Flip a probe region between healthy and down; time each flip until it is published."""
    import grpc

    from meridian.snapshot import HealthState
    from proto import region_pb2 as pb
    from proto import region_pb2_grpc as pb_grpc

    delays: list[float] = []
    timeouts = 0
    async with grpc.aio.insecure_channel(address) as channel:
        call = pb_grpc.RegionServiceStub(channel).Connect()
        await call.write(_register("probe", 8))
        await call.read()
        want = HealthState.HEALTHY
        seq = 0
        while time.monotonic() < until:
            seq += 1
            start = time.monotonic()
            fatal = want == HealthState.DOWN
            await call.write(pb.AgentMessage(report=_report(seq, 8, fatal=fatal)))
            seen = False
            while time.monotonic() - start < 5:
                current = feed.current
                region = current.region("probe") if current else None
                if region is not None and region.state == want:
                    seen = True
                    break
                await feed.wait_newer(feed.version, 1)
            if not seen:
                timeouts += 1
            elif seq > 1:  # the first report registers the probe: not a state change
                delays.append(time.monotonic() - start)
            want = HealthState.DOWN if want == HealthState.HEALTHY else HealthState.HEALTHY
            await asyncio.sleep(0.2)  # spacing between probes, not synchronization
        call.cancel()
    return delays, timeouts


def _etcd_endpoint() -> str | None:
    """etcd from MERIDIAN_TEST_ETCD (default 127.0.0.1:2379) when it answers, else None."""
    import os
    import socket

    endpoint = os.environ.get("MERIDIAN_TEST_ETCD", "127.0.0.1:2379")
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return endpoint
    except OSError:
        print(f"etcd at {endpoint} is not reachable: measuring in-process coordination only")
        return None


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    agents = 8 if args.quick else 16
    seconds = 3.0 if args.quick else 10.0
    with tempfile.TemporaryDirectory() as tmp:
        ours = asyncio.run(_measure("meridian", agents, seconds, Path(tmp)))
        naive = asyncio.run(_measure("naive", agents, seconds, Path(tmp)))
        etcd = _etcd_endpoint()
        on_etcd = (
            asyncio.run(_measure("meridian", agents, seconds, Path(tmp), etcd)) if etcd else None
        )
    ratio = ours["gpu_reports_per_s"] / max(naive["gpu_reports_per_s"], 1e-9)
    rows = [
        [
            name,
            r["gpu_reports_per_s"],
            r["paced_gpu_reports_per_s"],
            r["sql_writes_per_s"],
            r["publish_delay_ms_p50"],
            r["publish_delay_ms_max"],
            f"{int(r['probes'])} ({int(r['probe_timeouts'])} over 5 s)",
        ]
        for name, r in (
            ("meridian (in-process coordination)", ours),
            *((("meridian (etcd)", on_etcd),) if on_etcd else ()),
            ("naive (SQL per report)", naive),
        )
    ]
    figures: dict[str, float | int | str] = {
        "gpu_reports_per_s": round(ours["gpu_reports_per_s"]),
        "naive_gpu_reports_per_s": round(naive["gpu_reports_per_s"]),
        "ingest_ratio_vs_naive": round(ratio, 2),
        "paced_gpu_reports_per_s": round(ours["paced_gpu_reports_per_s"]),
        "naive_paced_gpu_reports_per_s": round(naive["paced_gpu_reports_per_s"]),
        "sql_writes_per_s": round(ours["sql_writes_per_s"], 2),
        "naive_sql_writes_per_s": round(naive["sql_writes_per_s"], 1),
        "publish_delay_ms_p50": round(ours["publish_delay_ms_p50"], 1),
        "publish_delay_ms_max": round(ours["publish_delay_ms_max"], 1),
    }
    if on_etcd:
        figures["etcd_gpu_reports_per_s"] = round(on_etcd["gpu_reports_per_s"])
        figures["etcd_publish_delay_ms_p50"] = round(on_etcd["publish_delay_ms_p50"], 1)
        figures["etcd_publish_delay_ms_max"] = round(on_etcd["publish_delay_ms_max"], 1)
    body = (
        f"{agents} agents x {GPUS_PER_AGENT} GPUs ({WORKERS_PER_AGENT} workers each) streaming "
        f"over loopback gRPC from a separate process: {seconds:.0f}s flat out (the ingestion "
        f"ceiling), then {seconds:.0f}s paced at {TARGET_GPU_REPORTS_PER_S:,} GPU reports/s, "
        "during which SQL writes and the publication delay (a probe region's state change "
        "until the new snapshot is seen through the coordination watch) are measured.\n\n"
        + table(
            [
                "implementation",
                "GPU reports/s (flat out)",
                f"GPU reports/s (offered {TARGET_GPU_REPORTS_PER_S:,})",
                "SQL writes/s",
                "publish delay p50 (ms)",
                "publish delay max (ms)",
                "probes",
            ],
            rows,
        )
        + f"\n\nIngestion ratio meridian / naive: {ratio:.2f}x."
    )
    record(
        "health",
        "Health plane: report ingestion and snapshot publication",
        body,
        figures,
        quick=args.quick,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
