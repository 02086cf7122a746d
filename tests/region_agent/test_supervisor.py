"""The local-process supervisor with a stand-in worker: start, scrape, restart, stop."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meridian.waiting import wait_until_async
from region_agent.agent import build_report
from region_agent.supervisor import LocalProcessSupervisor, WorkerSpec

ROOT = Path(__file__).resolve().parents[2]
STANDIN = str(Path(__file__).with_name("standin_worker.py"))
COMMAND = [
    sys.executable,
    STANDIN,
    "--port",
    "{port}",
    "--model",
    "{model}",
    "--version",
    "{version}",
]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists" until reaped; the supervisor reaps its children
    return True


@pytest.fixture
async def supervisor() -> AsyncIterator[LocalProcessSupervisor]:
    # the stand-in always reports a request in flight: its drains end by the grace period
    sup = LocalProcessSupervisor(
        command=COMMAND, scrape_interval_s=0.1, gpu_count=2, drain_min_s=0.2, drain_grace_s=1.0
    )
    await sup.start()
    try:
        yield sup
    finally:
        await sup.close()


def ready_ids(sup: LocalProcessSupervisor) -> set[str]:
    return {s.worker_id for s in sup.statuses() if s.ready}


async def test_directives_start_scrape_and_stop_workers(supervisor: LocalProcessSupervisor) -> None:
    await supervisor.apply([WorkerSpec("resnet", "1", replicas=2)])
    await wait_until_async(
        lambda: ready_ids(supervisor) == {"resnet-1-base-0", "resnet-1-base-1"},
        timeout=10,
        what="two ready workers",
    )
    stat = next(s for s in supervisor.statuses() if s.worker_id == "resnet-1-base-0")
    assert stat.models == ("resnet:1",)
    assert (stat.queue_depth, stat.in_flight, stat.capacity_rps) == (3, 1, 40.0)
    assert stat.latency_p99_ms == pytest.approx(9.9)
    assert stat.endpoint.startswith("http://127.0.0.1:")
    gpus = sorted(s.gpu_indices for s in supervisor.statuses())
    assert gpus == [(0,), (1,)]  # spread over the GPUs

    old_pids = {w: supervisor.pid(w) for w in ready_ids(supervisor)}
    # a new version replaces the old one; the old processes end
    await supervisor.apply([WorkerSpec("resnet", "2", replicas=1)])
    await wait_until_async(
        lambda: ready_ids(supervisor) == {"resnet-2-base-0"}, timeout=10, what="version 2"
    )
    for pid in old_pids.values():
        assert pid is not None and not alive(pid)

    await supervisor.apply([])  # drained (reported as such), then stopped
    assert [s.draining for s in supervisor.statuses()] == [True]
    await wait_until_async(lambda: supervisor.statuses() == [], timeout=10, what="all stopped")


async def test_a_reserve_worker_is_labelled_with_its_variant(
    supervisor: LocalProcessSupervisor,
) -> None:
    """A deployment's degrade_to variant runs beside the base, reported as
    ``model:version:variant`` (routers send it only a saturated region's overflow)."""
    await supervisor.apply(
        [WorkerSpec("resnet", "1"), WorkerSpec("resnet", "1", "int8", reserve=True)]
    )
    await wait_until_async(
        lambda: ready_ids(supervisor) == {"resnet-1-base-0", "resnet-1-int8-reserve-0"},
        timeout=10,
        what="the base and its reserve",
    )
    models = {s.worker_id: s.models for s in supervisor.statuses()}
    assert models == {
        "resnet-1-base-0": ("resnet:1",),
        "resnet-1-int8-reserve-0": ("resnet:1:int8",),
    }
    report = build_report(1, [], supervisor.statuses())
    assert sorted(tuple(w.models) for w in report.workers) == [("resnet:1",), ("resnet:1:int8",)]


async def test_crashed_worker_is_restarted(supervisor: LocalProcessSupervisor) -> None:
    await supervisor.apply([WorkerSpec("bert", "1")])
    await wait_until_async(lambda: ready_ids(supervisor), timeout=10, what="a ready worker")
    pid = supervisor.pid("bert-1-base-0")
    assert pid is not None
    os.kill(pid, 9)
    await wait_until_async(
        lambda: supervisor.restarts("bert-1-base-0") == 1, timeout=5, what="restart noticed"
    )
    await wait_until_async(
        lambda: ready_ids(supervisor) and supervisor.pid("bert-1-base-0") not in (None, pid),
        timeout=10,
        what="a new ready process",
    )
    assert all(s.error == "" for s in supervisor.statuses())  # ready again: no failure shown


async def test_unreachable_stats_mean_not_ready() -> None:
    sup = LocalProcessSupervisor(
        command=[sys.executable, "-c", "import time; time.sleep(30)"], scrape_interval_s=0.05
    )
    await sup.start()
    try:
        await sup.apply([WorkerSpec("m", "1")])
        await wait_until_async(lambda: sup.pid("m-1-base-0"), timeout=5, what="started")
        await wait_until_async(
            lambda: sup.statuses()[0].endpoint and sup.statuses()[0].models == ("m:1",),
            timeout=5,
            what="a scrape",
        )
        assert sup.statuses()[0].ready is False
    finally:
        await sup.close()


async def test_a_refused_model_reaches_the_report(tmp_path: Path) -> None:
    """A real worker whose int8 variant fails its accuracy probes exits at start-up; the
    reason it wrote last is the worker's error in the agent's report."""
    from tests.worker.models import build
    from worker.quantize import build_variant

    variant = tmp_path / "wide.int8.onnx"
    build_variant(build(tmp_path).wide_onnx, variant, tolerance=1e-9, samples=8)
    command = [
        sys.executable, "-m", "meridian", "worker", "--http-port", "{port}", "--grpc-port", "-1",
        "--engine-threads", "1", "--model", "{model}:{version}:{variant}={artifact_url}",
    ]  # fmt: skip
    sup = LocalProcessSupervisor(
        command=command, scrape_interval_s=0.1, env={"PYTHONPATH": str(ROOT)}, max_backoff_s=60
    )
    await sup.start()
    try:
        await sup.apply([WorkerSpec("wide", "1", "int8", artifact_url=str(variant))])
        await wait_until_async(
            lambda: sup.statuses()[0].error, timeout=60, what="the worker's failure"
        )
        error = sup.statuses()[0].error
        assert error.startswith("exited with 1: "), error
        assert "wide:1 variant int8: model wide.int8.onnx fails its accuracy probes" in error
        assert "exceeds the recorded tolerance 1e-09; not serving it" in error
        assert sup.statuses()[0].ready is False
        report = build_report(1, [], sup.statuses())
        assert report.workers[0].error == error
        assert report.workers[0].worker_id == "wide-1-int8-0"
    finally:
        await sup.close()


async def test_real_workers_serve_the_base_and_its_int8_reserve(tmp_path: Path) -> None:
    """``meridian worker`` processes: the base model and, as a reserve, its int8 variant
    (checked against fp32 on its probes at start); the reserve reports ``wide:1:int8``
    and answers inference on the base's path."""
    import httpx

    from tests.worker.models import build
    from worker.quantize import build_variant

    base = build(tmp_path).wide_onnx
    variant = tmp_path / "wide.int8.onnx"
    build_variant(base, variant, tolerance=0.1, samples=32)
    command = [
        sys.executable, "-m", "meridian", "worker", "--http-port", "{port}", "--grpc-port", "-1",
        "--engine-threads", "1", "--model", "{model}:{version}:{variant}={artifact_url}",
    ]  # fmt: skip
    sup = LocalProcessSupervisor(
        command=command, scrape_interval_s=0.1, env={"PYTHONPATH": str(ROOT)}
    )
    await sup.start()
    try:
        await sup.apply(
            [
                WorkerSpec("wide", "1", artifact_url=str(base)),
                WorkerSpec("wide", "1", "int8", artifact_url=str(variant), reserve=True),
            ]
        )
        await wait_until_async(
            lambda: ready_ids(sup) == {"wide-1-base-0", "wide-1-int8-reserve-0"},
            timeout=60,
            what="both workers ready",
        )
        stats = {s.worker_id: s for s in sup.statuses()}
        assert stats["wide-1-base-0"].models == ("wide:1",)
        assert stats["wide-1-int8-reserve-0"].models == ("wide:1:int8",)
        body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32",
                            "data": [0.5] * 16}]}  # fmt: skip
        outputs = {}
        async with httpx.AsyncClient(timeout=10) as client:
            for wid, stat in stats.items():
                r = await client.post(f"{stat.endpoint}/v2/models/wide/versions/1/infer", json=body)
                assert r.status_code == 200, r.text
                outputs[wid] = r.json()["outputs"][0]["data"]
        # the variant's answer is close to the base's, not identical (it is quantized)
        a, b = outputs["wide-1-base-0"], outputs["wide-1-int8-reserve-0"]
        assert a != b
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 0.1 * max(map(abs, a))
    finally:
        await sup.close()
