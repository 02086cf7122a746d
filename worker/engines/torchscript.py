"""PyTorch TorchScript engine: CUDA with fp16 when available, CPU otherwise.

TorchScript files do not carry tensor shapes, so the signature is read from an
extra file ``signature.json`` stored in the archive (see :func:`save_with_signature`);
without it, input names come from ``forward``'s schema and shapes are unknown.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meridian.errors import InvalidInput
from worker.tensors import DATATYPE_TO_NUMPY, TensorSpec

__all__ = ["SIGNATURE_FILE", "TorchScriptEngine", "save_with_signature"]

SIGNATURE_FILE = "signature.json"


def save_with_signature(
    module: Any, path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]
) -> None:
    """Save a scripted/traced module with its signature embedded."""
    import torch

    signature = {
        "inputs": [s.as_dict() for s in inputs],
        "outputs": [s.as_dict() for s in outputs],
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # see TorchScriptEngine.__init__
        torch.jit.save(module, str(path), _extra_files={SIGNATURE_FILE: json.dumps(signature)})


def _specs(items: list[dict[str, Any]]) -> list[TensorSpec]:
    return [TensorSpec(i["name"], i["datatype"], tuple(i["shape"])) for i in items]


class TorchScriptEngine:
    platform = "pytorch_libtorch"

    def __init__(self, path: Path, *, threads: int | None = None, use_gpu: bool = True) -> None:
        import torch

        self._torch = torch
        cuda = use_gpu and torch.cuda.is_available()
        self.device = "cuda" if cuda else "cpu"
        if threads:
            torch.set_num_threads(threads)
        extra = {SIGNATURE_FILE: ""}
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated upstream in favour of torch.export, but
                # it is the artifact format operators ship today; keep serving it.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location=self.device, _extra_files=extra)
        except Exception as exc:  # torch raises RuntimeError/ValueError variants
            raise InvalidInput(f"not a loadable TorchScript model: {exc}") from exc
        module.eval()
        self._half = cuda
        if self._half:
            module = module.half()
        self._module = module
        if extra[SIGNATURE_FILE]:
            sig = json.loads(extra[SIGNATURE_FILE])
            self.inputs = _specs(sig["inputs"])
            self.outputs = _specs(sig["outputs"])
        else:
            names = [a.name for a in module.forward.schema.arguments[1:]]
            self.inputs = [TensorSpec(n, "FP32", None) for n in names]
            self.outputs = [TensorSpec("output__0", "FP32", None)]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        args = []
        for spec in self.inputs:
            t = torch.from_numpy(np.ascontiguousarray(inputs[spec.name])).to(self.device)
            if self._half and t.is_floating_point():
                t = t.half()
            args.append(t)
        with torch.inference_mode():
            result = self._module(*args)
        values = list(result) if isinstance(result, tuple | list) else [result]
        out: dict[str, np.ndarray] = {}
        for spec, value in zip(self.outputs, values, strict=True):
            array = value.detach().float().cpu().numpy() if self._half else value.cpu().numpy()
            want = DATATYPE_TO_NUMPY.get(spec.datatype)
            out[spec.name] = array.astype(want, copy=False) if want is not None else array
        return out

    def close(self) -> None:
        del self._module
