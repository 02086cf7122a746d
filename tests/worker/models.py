"""Small real models for the worker tests, built with torch and exported."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from worker.probes import ProbeSet


@dataclass(frozen=True)
class BuiltModels:
    mlp_onnx: Path
    cnn_onnx: Path
    mlp_torchscript: Path
    wide_onnx: Path


def _mlp(torch: object, width: int = 32) -> object:
    import torch as t

    t.manual_seed(0)
    return t.nn.Sequential(
        t.nn.Linear(16, width),
        t.nn.ReLU(),
        t.nn.Linear(width, width),
        t.nn.ReLU(),
        t.nn.Linear(width, 4),
    ).eval()


def _cnn() -> object:
    import torch as t

    t.manual_seed(1)
    return t.nn.Sequential(
        t.nn.Conv2d(3, 8, 3, padding=1),
        t.nn.ReLU(),
        t.nn.AdaptiveAvgPool2d(1),
        t.nn.Flatten(),
        t.nn.Linear(8, 5),
    ).eval()


def _export(module: Any, example: object, path: Path) -> None:
    import torch

    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated but needs no extra packages.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def build(directory: Path) -> BuiltModels:
    import torch

    from worker.engines.torchscript import save_with_signature
    from worker.tensors import TensorSpec

    mlp = _mlp(torch)
    cnn = _cnn()
    paths = BuiltModels(
        directory / "mlp.onnx",
        directory / "cnn.onnx",
        directory / "mlp.pt",
        directory / "wide.onnx",
    )
    _export(mlp, torch.randn(2, 16), paths.mlp_onnx)
    _export(cnn, torch.randn(2, 3, 8, 8), paths.cnn_onnx)
    _export(_mlp(torch, width=256), torch.randn(2, 16), paths.wide_onnx)
    with torch.no_grad(), warnings.catch_warnings():
        # TorchScript is deprecated upstream; it is still what the engine serves.
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(mlp, torch.randn(2, 16))
    save_with_signature(
        traced,
        paths.mlp_torchscript,
        [TensorSpec("input", "FP32", (-1, 16))],
        [TensorSpec("output", "FP32", (-1, 4))],
    )
    return paths


def onnx_reference(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(None, {"input": x})[0]
    return out


def torchscript_reference(path: Path, x: np.ndarray) -> np.ndarray:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path))
    with torch.inference_mode():
        out: np.ndarray = module(torch.from_numpy(x)).numpy()
    return out


def probes_of(path: Path) -> ProbeSet:
    """The accuracy probes recorded in an ONNX model's metadata."""
    import onnx

    from worker.probes import PROBES_KEY, ProbeSet

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ProbeSet.decode(meta[PROBES_KEY])
