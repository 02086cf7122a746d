"""ONNX Runtime engine: CUDA execution provider when present, CPU otherwise.

A model carrying accuracy probes (:mod:`worker.probes`, written by ``meridian
quantize``) is checked against them as it opens: past its recorded tolerance on
this host it is refused with :class:`worker.probes.ProbeMismatch` (HTTP 422).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from meridian.errors import InvalidInput
from worker.probes import PROBES_KEY, ProbeSet, verify
from worker.tensors import TensorSpec

__all__ = ["OnnxEngine"]

log = logging.getLogger(__name__)

_ORT_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: ort.NodeArg) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, _ORT_TO_DATATYPE.get(arg.type, arg.type), dims)


class OnnxEngine:
    platform = "onnxruntime_onnx"

    def __init__(self, path: Path, *, threads: int | None = None, use_gpu: bool = True) -> None:
        options = ort.SessionOptions()
        # One batch runs at a time per model: give it the host's cores, and no
        # inter-op pool that would only compete with them.
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads would otherwise spin between batches, taking the
        # cores the event loop needs to parse the next requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise InvalidInput(f"not a loadable ONNX model: {exc}") from exc
        # A provider can be listed yet fail to initialise: trust what the session uses.
        active = self._session.get_providers()
        self.device = "cuda" if "CUDAExecutionProvider" in active else "cpu"
        if "CUDAExecutionProvider" in providers and self.device != "cuda":
            log.warning("CUDA execution provider unavailable for %s; running on CPU", path)
        self.inputs = [_spec(a) for a in self._session.get_inputs()]
        self.outputs = [_spec(a) for a in self._session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self.probe_error: float | None = None  # relative error on its probes, when it has some
        self._check_probes(path)

    def _check_probes(self, path: Path) -> None:
        text = self.metadata.get(PROBES_KEY)
        if text is None:
            log.info("%s has no accuracy probes: its outputs on this host are not checked", path)
            return
        try:
            self.probe_error = verify(ProbeSet.decode(text), self.run, f"model {path.name}")
        except InvalidInput as exc:
            log.error("refusing %s: %s", path, exc.message)
            self.close()
            raise
        log.info("%s passes its accuracy probes (relative error %.4g)", path, self.probe_error)

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._session.run(self._output_names, dict(inputs))
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        del self._session
