"""Brownout with real processes on loopback: a saturated base worker's overflow is served by
the deployment's int8 variant, and the base serves everything again once load falls.

``bench/busy_worker.py`` processes of fixed capacity stand for the base (2 slots x 100 ms)
and its int8 variant (4 slots x 50 ms), behind a ``meridian router`` process whose snapshot
declares ``degrade_to: int8``.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import httpx

from bench.brownout import DEADLINE_MS, brownout_fleet, offer, summary
from meridian.snapshot import (
    DeploymentRoute,
    HealthState,
    RegionView,
    RoutingSnapshot,
    WorkerView,
)
from meridian.waiting import wait_until_async
from region_agent.supervisor import LocalProcessSupervisor, WorkerSpec
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.worker.models import _export, _mlp
from worker.quantize import build_variant

ROOT = Path(__file__).resolve().parents[2]

SECONDS = 4.0


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_the_int8_variant_takes_the_overflow_and_load_falling_returns_to_base(
    tmp_path: Path,
) -> None:
    async with brownout_fleet(tmp_path) as fleet, fleet.router(1.0, hold_s=1.0) as client:
        answers = await offer(client, 40.0, SECONDS)  # twice the base's 20 requests/s
        s = summary(answers, SECONDS)
        print(f"\n2x load: {s}")
        assert s["failed"] == 0
        assert 0.3 < s["int8_share"] < 0.9  # the overflow, not everything
        assert s["p99_ms"] < DEADLINE_MS
        metrics = await fleet.metrics()
        served = _metric(metrics, 'meridian_router_brownout_total{model="slow",variant="int8"}')
        assert served == sum(1 for a in answers if a.variant == "int8")
        assert _metric(metrics, 'meridian_router_brownout_regions{model="slow"}') == 1.0

        # load falls: one request at a time fits the base, and the region leaves brownout
        quiet = [await client.request(*_one()) for _ in range(20)]
        assert all(status == 200 for status, _ in quiet)
        assert not any("x-meridian-variant" in fields for _, fields in quiet)
        started = time.monotonic()

        async def left() -> bool:
            text = await fleet.metrics()
            return 'meridian_router_brownout_regions{model="slow"}' not in text

        await wait_until_async(left, timeout=10.0, what="the region to leave brownout")
        assert time.monotonic() - started < 5.0


def _one() -> tuple[str, bytes, list[tuple[str, str]]]:
    from bench._overload_fleet import BODY, CLIENT_AT, PATH

    return PATH, BODY, [("x-meridian-client-location", CLIENT_AT.decode())]


async def test_real_onnx_workers_base_saturated_int8_reserve_takes_the_rest(
    tmp_path: Path,
) -> None:
    """``meridian worker`` processes (one row per engine run, one thread) for an MLP and its
    int8 variant (``meridian quantize``, checked on its probes) as a reserve, as the
    agent's supervisor runs them, behind an in-process router with brownout at load 1
    on their measured capacity: concurrent requests overflow to int8, one at a time they
    stay on the base."""
    base_path = _heavy_mlp(tmp_path / "wide.onnx")  # a few ms per row on one thread
    int8_path = tmp_path / "wide.int8.onnx"
    build_variant(base_path, int8_path, tolerance=0.1, samples=32)
    command = [
        sys.executable, "-m", "meridian", "worker", "--http-port", "{port}", "--grpc-port", "-1",
        "--engine-threads", "1", "--max-batch-size", "1",
        "--model", "{model}:{version}:{variant}={artifact_url}",
    ]  # fmt: skip
    sup = LocalProcessSupervisor(
        command=command, scrape_interval_s=0.1, env={"PYTHONPATH": str(ROOT)}
    )
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                        "data": [0.5] * 16}]}  # fmt: skip
    await sup.start()
    server = None
    try:
        await sup.apply(
            [
                WorkerSpec("wide", "1", artifact_url=str(base_path)),
                WorkerSpec("wide", "1", "int8", artifact_url=str(int8_path), reserve=True),
            ]
        )
        await wait_until_async(
            lambda: sum(1 for s in sup.statuses() if s.ready) == 2, timeout=60, what="workers"
        )
        async with httpx.AsyncClient(timeout=10) as direct:  # warm up: capacity is measured
            for stat in sup.statuses():
                for _ in range(20):
                    url = f"{stat.endpoint}/v2/models/wide/versions/1/infer"
                    assert (await direct.post(url, json=body)).status_code == 200
        await wait_until_async(
            lambda: all(s.capacity_rps > 0 for s in sup.statuses()),
            timeout=10,
            what="measured capacity",
        )
        views = tuple(
            WorkerView(s.worker_id, s.endpoint, HealthState.HEALTHY, s.models,
                       capacity_rps=s.capacity_rps, latency_p50_ms=s.latency_p50_ms)
            for s in sup.statuses()
        )  # fmt: skip
        region = RegionView("eu", HealthState.HEALTHY, 50.1, 8.7, workers=views,
                            capacity_rps=sum(v.capacity_rps for v in views))  # fmt: skip
        deployment = DeploymentRoute("wide", "1", "eu", degrade_to="int8")
        snap = RoutingSnapshot(1, time.time(), regions=(region,), deployments=(deployment,))
        settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", brownout_max_load=1.0)
        server = RouterServer(settings, NearestPolicy())
        server.store.offer(snap)
        port = await server.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            async def one() -> str:
                r = await client.post("/v2/models/wide/infer", json=body)
                assert r.status_code == 200, r.text
                return r.headers.get("x-meridian-variant", "")

            before = [await one() for _ in range(20)]  # also: the router's service time
            burst = await asyncio.gather(*(one() for _ in range(200)))
            alone = [await one() for _ in range(20)]
        served = burst.count("int8")
        capacity = {v.worker_id: v.capacity_rps for v in views}
        print(f"\nreal workers (engine rows/s {capacity}): {served} of 200 at once served by int8")
        assert before == [""] * 20  # one at a time: the base
        assert 0 < served < 200  # the overflow, not everything
        assert alone == [""] * 20  # load fell: the base serves every request
        assert server.core.brownout_ledger.served[("wide", "int8")] == served
    finally:
        if server is not None:
            await server.stop()
        await sup.close()


def _heavy_mlp(path: Path) -> Path:
    import torch

    _export(_mlp(torch, width=3072), torch.randn(2, 16), path)
    return path
