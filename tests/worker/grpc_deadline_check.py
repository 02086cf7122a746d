"""Run as a child process by ``test_grpc_deadline``: the worker's gRPC server and the
project's OIP protobuf module share the descriptor pool's ``inference`` names with
``tritonclient.grpc``, which other tests import in the pytest process.

The OIP gRPC deadline is the request's deadline: a call still queued when it runs
out is answered DEADLINE_EXCEEDED with the reason, never runs, and is counted as a
deadline drop (as a REST request past ``x-meridian-deadline-ms``)."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import grpc
import numpy as np
import pytest

from meridian.waiting import wait_until_async
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from tests.worker.inprocess import GateEngine
from worker.dataplane import DataPlane
from worker.grpc_service import GrpcServer
from worker.settings import WorkerSettings


def _request() -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0, 4.0])
    return pb.ModelInferRequest(model_name="gate", inputs=[tensor])


def _dropped(dp: DataPlane) -> float:
    value = dp.metrics.registry.get_sample_value(
        "meridian_worker_deadline_dropped_total", {"model": "gate:1"}
    )
    return value or 0.0


async def check(tmp_path: Path) -> None:
    dp = DataPlane(WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0, max_batch_size=1))
    engine = GateEngine(width=4)
    await dp.install_engine("gate", "1", engine)
    await dp.start()
    server = GrpcServer(dp, "127.0.0.1", 0)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        engine.gate.clear()  # the engine is stuck on the first call: the next one queues

        async def first() -> pb.ModelInferResponse:
            return await stub.ModelInfer(_request())

        blocker = asyncio.create_task(first())
        await wait_until_async(engine.running.is_set, timeout=10, what="engine busy")
        runs = len(engine.batches)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ModelInfer(_request(), timeout=0.3)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the server's answer says why, unless the client's own timer (the same deadline)
        # fired first: the two race by design; the drop below is the server's side either way
        details = caught.value.details() or ""
        assert "deadline passed" in details or "Deadline Exceeded" in details, details
        engine.gate.set()
        answer = await blocker
        await wait_until_async(lambda: _dropped(dp) == 1.0, timeout=10, what="the drop counted")
        doubled = np.frombuffer(answer.raw_output_contents[0], dtype="<f4")
        assert np.allclose(doubled, [2.0, 4.0, 6.0, 8.0])
        assert len(engine.batches) == runs  # the late call never reached the engine
        # with time to spare, a call is served
        served = await stub.ModelInfer(_request(), timeout=10)
        assert served.model_name == "gate"
        assert _dropped(dp) == 1.0
    finally:
        engine.gate.set()
        await channel.close()
        await server.stop(grace_s=1)
        await dp.stop()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(check(Path(tmp)))
    print("grpc deadline check passed")
    sys.exit(0)
