"""Dynamic batching, backpressure and cancellation through a real HTTP socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from meridian.waiting import wait_until_async
from tests.worker.inprocess import FRONTS, Front, GateEngine, LiveWorker, live_worker
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings


def _settings(tmp_path: Path, **kw: object) -> WorkerSettings:
    base: dict[str, object] = {"cache_dir": tmp_path, "max_queue_delay_ms": 0.0}
    return WorkerSettings(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
async def gate() -> GateEngine:
    return GateEngine()


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest) -> Front:
    """Every test here runs on both HTTP front ends."""
    value: Front = request.param
    return value


@pytest.fixture
async def worker(tmp_path: Path, gate: GateEngine, front: Front) -> AsyncIterator[LiveWorker]:
    settings = _settings(tmp_path, max_queue_size=8, max_batch_size=16)
    dp = DataPlane(settings)
    await dp.install_engine("gate", "1", gate)
    async with live_worker(settings, dp, front) as w:
        yield w
    gate.gate.set()


def _body(x: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }


async def _infer(client: httpx.AsyncClient, x: np.ndarray) -> httpx.Response:
    return await client.post("/v2/models/gate/infer", json=_body(x))


def _stats(worker: LiveWorker) -> dict[str, int | float]:
    stats = worker.dataplane.stats()
    models = stats["models"]
    assert isinstance(models, dict)
    return models["gate:1"]  # type: ignore[no-any-return]


async def _hold_engine(client: httpx.AsyncClient, gate: GateEngine) -> asyncio.Task[httpx.Response]:
    """Close the gate and send one request, which the engine then holds."""
    gate.gate.clear()
    first = asyncio.create_task(_infer(client, np.ones((1, 4), np.float32)))
    await wait_until_async(gate.running.is_set, timeout=10, what="engine busy")
    return first


async def test_concurrent_requests_share_one_engine_run(
    worker: LiveWorker, gate: GateEngine
) -> None:
    async with httpx.AsyncClient(base_url=worker.url) as client:
        first = await _hold_engine(client, gate)
        xs = [np.full((1, 4), i, np.float32) for i in range(6)]
        rest = [asyncio.create_task(_infer(client, x)) for x in xs]
        await wait_until_async(
            lambda: _stats(worker)["queue_depth"] == 6, timeout=10, what="six queued"
        )
        gate.gate.set()
        responses = await asyncio.gather(first, *rest)
        metrics = (await client.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 7
    for x, r in zip(xs, responses[1:], strict=True):
        assert r.json()["outputs"][0]["data"] == (x * 2).ravel().tolist()
    assert gate.batches == [(1, 4), (6, 4)]
    assert 'meridian_worker_batch_rows_bucket{le="8.0",model="gate:1"} 2.0' in metrics
    assert 'meridian_worker_batch_rows_count{model="gate:1"} 2.0' in metrics
    assert _stats(worker)["mean_batch_rows"] == 3.5


async def test_mixed_shapes_are_never_mixed(worker: LiveWorker, gate: GateEngine) -> None:
    async with httpx.AsyncClient(base_url=worker.url) as client:
        first = await _hold_engine(client, gate)
        widths = [4, 6, 4, 6, 6]
        xs = [
            np.random.default_rng(i).standard_normal((2, w)).astype(np.float32)
            for i, w in enumerate(widths)
        ]
        tasks = [asyncio.create_task(_infer(client, x)) for x in xs]
        await wait_until_async(
            lambda: _stats(worker)["queue_depth"] == 5, timeout=10, what="five queued"
        )
        gate.gate.set()
        responses = await asyncio.gather(*tasks)
        await first
    for x, r in zip(xs, responses, strict=True):
        out = r.json()["outputs"][0]
        assert out["shape"] == list(x.shape)
        np.testing.assert_allclose(np.asarray(out["data"]).reshape(x.shape), x * 2, rtol=1e-6)
    assert sorted(gate.batches[1:]) == [(4, 4), (6, 6)]


async def test_full_queue_answers_503_with_retry_after(
    worker: LiveWorker, gate: GateEngine
) -> None:
    async with httpx.AsyncClient(base_url=worker.url) as client:
        first = await _hold_engine(client, gate)
        queued = [
            asyncio.create_task(_infer(client, np.ones((1, 4), np.float32))) for _ in range(8)
        ]
        await wait_until_async(
            lambda: _stats(worker)["queue_depth"] == 8, timeout=10, what="queue full"
        )
        refused = await _infer(client, np.ones((1, 4), np.float32))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "queue is full" in refused.json()["error"]
        gate.gate.set()
        done = await asyncio.gather(first, *queued)
    assert all(r.status_code == 200 for r in done)
    assert _stats(worker)["rejected"] == 1


async def test_disconnected_client_is_dropped_from_the_queue(
    worker: LiveWorker, gate: GateEngine
) -> None:
    async with httpx.AsyncClient(base_url=worker.url) as client:
        first = await _hold_engine(client, gate)
        async with httpx.AsyncClient(base_url=worker.url, timeout=0.3) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await _infer(impatient, np.full((1, 4), 7, np.float32))
        await wait_until_async(
            lambda: _stats(worker)["dropped"] == 1, timeout=10, what="request dropped"
        )
        assert _stats(worker)["queue_depth"] == 0
        kept = asyncio.create_task(_infer(client, np.full((1, 4), 3, np.float32)))
        await wait_until_async(
            lambda: _stats(worker)["queue_depth"] == 1, timeout=10, what="one queued"
        )
        gate.gate.set()
        assert (await first).status_code == 200
        assert (await kept).json()["outputs"][0]["data"] == [6.0] * 4
    # The dropped request never reached the engine.
    assert gate.batches == [(1, 4), (1, 4)]


async def test_request_timeout_parameter_answers_504(worker: LiveWorker, gate: GateEngine) -> None:
    async with httpx.AsyncClient(base_url=worker.url) as client:
        first = await _hold_engine(client, gate)
        body = _body(np.ones((1, 4), np.float32))
        body["parameters"] = {"timeout": 50_000}
        r = await client.post("/v2/models/gate/infer", json=body)
        gate.gate.set()
        await first
    assert r.status_code == 504
    assert _stats(worker)["dropped"] == 1


async def test_bad_requests_get_clear_4xx(tmp_path: Path, front: Front) -> None:
    settings = _settings(tmp_path, max_request_bytes=4096)
    dp = DataPlane(settings)
    await dp.install_engine("gate", "1", GateEngine(width=4))
    async with (
        live_worker(settings, dp, front) as w,
        httpx.AsyncClient(base_url=w.url) as client,
    ):
        url = "/v2/models/gate/infer"
        big = await client.post(url, content=b"x" * 5000)
        assert big.status_code == 413
        header = orjson.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "datatype": "FP32",
                        "shape": [1, 4],
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            }
        )
        cases = {
            "not json": (b"{nope", {}),
            "header past end": (header, {"Inference-Header-Content-Length": "9999"}),
            "header not a number": (header, {"Inference-Header-Content-Length": "abc"}),
            "short binary": (
                header + b"\0" * 8,
                {"Inference-Header-Content-Length": str(len(header))},
            ),
            "extra binary": (
                header + b"\0" * 20,
                {"Inference-Header-Content-Length": str(len(header))},
            ),
        }
        for what, (content, headers) in cases.items():
            r = await client.post(url, content=content, headers=headers)
            assert r.status_code == 400, what
            assert r.json()["code"] == "invalid_input", what
        ok = await client.post(
            url,
            content=header + np.ones(4, np.float32).tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert ok.status_code == 200
        assert ok.json()["outputs"][0]["data"] == [2.0] * 4
        wrong = await client.post(
            url,
            json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
            },
        )
        assert wrong.status_code == 400 and "'x'" in wrong.json()["error"]
        count = await client.post(
            url,
            json={
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]
            },
        )
        assert count.status_code == 400 and "3 values" in count.json()["error"]
        dtype = await client.post(
            url,
            json={
                "inputs": [
                    {"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [1, 2, 3, 4]}
                ]
            },
        )
        assert dtype.status_code == 400 and "expected FP32" in dtype.json()["error"]
        missing = await client.post(url, json={"inputs": []})
        assert missing.status_code == 400
        assert (await client.get("/v2/models/other")).status_code == 404
        assert (await client.get("/v2/health/live")).json() == {"live": True}


class _BrokenEngine(GateEngine):
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("secret internal detail")


async def test_engine_failure_is_500_with_a_fixed_message(tmp_path: Path, front: Front) -> None:
    settings = _settings(tmp_path)
    dp = DataPlane(settings)
    await dp.install_engine("broken", "1", _BrokenEngine(width=4))
    async with (
        live_worker(settings, dp, front) as w,
        httpx.AsyncClient(base_url=w.url) as client,
    ):
        r = await client.post("/v2/models/broken/infer", json=_body(np.ones((1, 4), np.float32)))
        assert r.status_code == 500
        assert "secret" not in r.text
        assert r.json()["code"] == "internal"
        # The worker keeps serving afterwards.
        assert (await client.get("/v2/health/ready")).status_code == 200
        stats = (await client.get("/v2/stats")).json()
    model = stats["models"]["broken:1"]
    assert model["failures"] == 1 and model["in_flight"] == 0
    assert {"queue_depth", "in_flight", "throughput_rps", "models", "loaded"} <= set(stats)
    assert {"latency_p50_ms", "latency_p99_ms", "throughput_rps"} <= set(model)
