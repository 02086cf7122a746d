"""GPU paths: TorchScript in fp16 on CUDA and ONNX Runtime's CUDA provider."""

from __future__ import annotations

import numpy as np
import pytest

from tests.worker.models import BuiltModels, onnx_reference, torchscript_reference

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_torchscript_runs_fp16_on_cuda(models: BuiltModels) -> None:
    from worker.engines.torchscript import TorchScriptEngine

    engine = TorchScriptEngine(models.mlp_torchscript)
    assert engine.device == "cuda"
    x = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    out = engine.run({"input": x})["output"]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, torchscript_reference(models.mlp_torchscript, x), atol=2e-2)


def test_onnx_uses_the_cuda_provider_when_installed(models: BuiltModels) -> None:
    import onnxruntime as ort

    from worker.engines.onnx import OnnxEngine

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime without the CUDA execution provider")
    engine = OnnxEngine(models.mlp_onnx)
    assert engine.device == "cuda"
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    np.testing.assert_allclose(
        engine.run({"input": x})["output"], onnx_reference(models.mlp_onnx, x), atol=1e-4
    )
