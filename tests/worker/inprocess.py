"""An in-process worker on a real socket, and an engine the tests can hold back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import uvicorn

from meridian.net import free_port
from meridian.waiting import wait_until_async
from worker.app import create_app, running
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings
from worker.tensors import TensorSpec


class GateEngine:
    """Doubles its input; ``run`` waits while the gate is closed and records each batch."""

    platform = "test"
    device = "cpu"

    def __init__(self, width: int = -1) -> None:
        self.inputs = [TensorSpec("x", "FP32", (-1, width))]
        self.outputs = [TensorSpec("y", "FP32", (-1, width))]
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[tuple[int, ...]] = []
        self.running = threading.Event()

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append(tuple(x.shape))
        self.running.set()
        if not self.gate.wait(timeout=30):
            raise RuntimeError("gate never opened")
        return {"y": x * 2}

    def close(self) -> None:
        self.gate.set()


@dataclass
class LiveWorker:
    url: str
    dataplane: DataPlane


Front = Literal["worker", "asgi"]
FRONTS: tuple[Front, ...] = ("worker", "asgi")


@asynccontextmanager
async def live_worker(
    settings: WorkerSettings, dataplane: DataPlane, front: Front = "worker"
) -> AsyncIterator[LiveWorker]:
    """The worker's app on a real socket: served by the worker's own HTTP server
    (as ``meridian worker`` runs it), or by uvicorn as a plain ASGI app."""
    port = free_port()
    app = create_app(
        settings.model_copy(update={"http_port": port, "grpc_port": None}), dataplane=dataplane
    )
    if front == "worker":
        async with running(app, "127.0.0.1", port) as bound:
            yield LiveWorker(f"http://127.0.0.1:{bound}", dataplane)
        return
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await wait_until_async(
            lambda: server.started or task.done(), timeout=10, what="server started"
        )
        if task.done():
            task.result()
        yield LiveWorker(f"http://127.0.0.1:{port}", dataplane)
    finally:
        server.should_exit = True
        await task
