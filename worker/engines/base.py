"""The engine interface: a loaded model that runs numpy batches synchronously.

Engines are called from a worker thread (never on the event loop). Their
signature comes from the model file itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from meridian.errors import InvalidInput
from worker.tensors import TensorSpec

__all__ = ["Engine", "EngineFormat", "open_engine"]

EngineFormat = Literal["onnx", "torchscript"]


class Engine(Protocol):
    platform: str
    device: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def open_engine(
    path: Path, fmt: EngineFormat, *, threads: int | None = None, use_gpu: bool = True
) -> Engine:
    """Open a model file with the engine for its format."""
    if fmt == "onnx":
        from worker.engines.onnx import OnnxEngine
        from worker.engines.text import TOKENIZER_KEY, TextEmbeddingEngine

        engine = OnnxEngine(path, threads=threads, use_gpu=use_gpu)
        if TOKENIZER_KEY in engine.metadata:
            return TextEmbeddingEngine(engine)
        return engine
    if fmt == "torchscript":
        from worker.engines.torchscript import TorchScriptEngine

        return TorchScriptEngine(path, threads=threads, use_gpu=use_gpu)
    raise InvalidInput(f"format '{fmt}' is not supported (onnx or torchscript)")


def guess_format(path: Path) -> EngineFormat:
    """The format from a file name: ``.pt``/``.ts``/``.torchscript`` or ONNX."""
    if path.suffix in {".pt", ".ts", ".torchscript", ".pth"}:
        return "torchscript"
    return "onnx"
