"""Unloading drains the queue; model specs; TorchScript without a stored signature."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path

import numpy as np
import pytest

from meridian.errors import InvalidInput, NotFound
from meridian.waiting import wait_until_async
from tests.worker.inprocess import GateEngine
from tests.worker.models import BuiltModels
from worker.app import ModelSpec
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings
from worker.tensors import InferenceRequest, InputTensor


def _request(model: str, x: np.ndarray) -> InferenceRequest:
    return InferenceRequest(model, None, [InputTensor("x", "FP32", x)])


async def test_unload_answers_what_was_queued(tmp_path: Path) -> None:
    dp = DataPlane(WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0))
    await dp.start()
    gate = GateEngine()
    gate.gate.clear()
    model = await dp.install_engine("gate", "1", gate)
    calls = [asyncio.create_task(dp.infer(_request("gate", np.zeros((1, 3), np.float32))))]
    await wait_until_async(gate.running.is_set, timeout=10, what="engine busy")
    calls += [
        asyncio.create_task(dp.infer(_request("gate", np.full((1, 3), i, np.float32))))
        for i in range(1, 4)
    ]
    await wait_until_async(
        lambda: model.batcher.stats.queue_depth == 3,
        timeout=10,
        what="three queued behind the running one",
    )
    unload = asyncio.create_task(dp.unload("gate"))
    await wait_until_async(lambda: not dp.repository.names(), timeout=10, what="unlisted")
    with pytest.raises(NotFound):
        await dp.infer(_request("gate", np.ones((1, 3), np.float32)))
    gate.gate.set()
    results = await asyncio.gather(*calls)
    await unload
    assert [float(r.outputs["y"][0, 0]) for r in results] == [0.0, 2.0, 4.0, 6.0]
    await dp.stop()


def test_model_spec_parsing() -> None:
    assert ModelSpec.parse("mlp:3=/m/a.onnx") == ModelSpec("mlp", "3", Path("/m/a.onnx"))
    assert ModelSpec.parse("mlp=/m/a.onnx").version == "1"
    with pytest.raises(ValueError):
        ModelSpec.parse("mlp:3")


def test_torchscript_without_signature_uses_forward_names(
    models: BuiltModels, tmp_path: Path
) -> None:
    import torch

    from worker.engines.torchscript import TorchScriptEngine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(models.mlp_torchscript))
        bare = tmp_path / "bare.pt"
        torch.jit.save(module, str(bare))
    engine = TorchScriptEngine(bare, use_gpu=False)
    assert [s.name for s in engine.inputs] == ["input"]
    assert engine.inputs[0].shape is None
    out = engine.run({"input": np.ones((2, 16), np.float32)})
    assert out["output__0"].shape == (2, 4)


async def test_load_request_validation(tmp_path: Path) -> None:
    from worker.repository import LoadRequest

    with pytest.raises(InvalidInput, match="exactly one"):
        LoadRequest.parse({"version": "1"})
    with pytest.raises(InvalidInput, match="sha256"):
        LoadRequest.parse({"artifact_url": "http://127.0.0.1:1/a.onnx"})
    with pytest.raises(InvalidInput, match="format"):
        LoadRequest.parse({"path": "/a", "format": "tensorflow"})
    ok = LoadRequest.parse({"parameters": {"path": "/a", "version": "7", "variant": "int8"}})
    assert (ok.version, ok.variant) == ("7", "int8")
