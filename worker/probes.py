"""Accuracy probes carried inside an ONNX model, checked where the model is opened.

A quantized variant (``meridian quantize``) records a few inputs, the fp32 base
model's outputs for them and the largest relative error it accepts, in the
model's ``metadata_props`` under ``meridian.probes``. The artifact stays one
file and its sha256 covers the probes. A worker opening the model runs the
probe inputs on its own CPU and refuses to serve it when the error exceeds the
recorded tolerance (:class:`ProbeMismatch`).

The value is JSON::

    {"format": 1, "metric": "max_rel_error", "tolerance": 0.05,
     "inputs": ["input"], "outputs": ["output"], "arrays": "<base64 npz>"}

where the npz (compressed) holds ``i0, i1, ...`` (the inputs, in the order of
``inputs``) and ``o0, o1, ...`` (the reference outputs). The error is the one
``meridian quantize`` reports: the largest absolute difference over all outputs
divided by the largest reference magnitude.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from meridian.errors import InvalidInput

__all__ = ["PROBES_KEY", "ProbeMismatch", "ProbeSet", "attach", "max_errors", "verify"]

PROBES_KEY = "meridian.probes"
_FORMAT = 1


class ProbeMismatch(InvalidInput):
    """The model's outputs on this host are outside its recorded tolerance."""

    status = 422
    code = "probe_mismatch"


@dataclass(frozen=True)
class ProbeSet:
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    tolerance: float

    def encode(self) -> str:
        buffer = io.BytesIO()
        arrays = {f"i{k}": v for k, v in enumerate(self.inputs.values())}
        arrays |= {f"o{k}": v for k, v in enumerate(self.outputs.values())}
        np.savez_compressed(buffer, allow_pickle=False, **arrays)
        return json.dumps(
            {
                "format": _FORMAT,
                "metric": "max_rel_error",
                "tolerance": self.tolerance,
                "inputs": list(self.inputs),
                "outputs": list(self.outputs),
                "arrays": base64.b64encode(buffer.getvalue()).decode("ascii"),
            }
        )

    @classmethod
    def decode(cls, text: str) -> ProbeSet:
        """Parse the metadata value; a malformed one is an :class:`InvalidInput`."""
        try:
            doc = json.loads(text)
            if doc.get("format") != _FORMAT or doc.get("metric") != "max_rel_error":
                raise ValueError(f"format {doc.get('format')!r} / metric {doc.get('metric')!r}")
            tolerance = float(doc["tolerance"])
            if not math.isfinite(tolerance) or tolerance < 0:
                raise ValueError(f"tolerance {tolerance!r}")
            raw = base64.b64decode(doc["arrays"], validate=True)
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                inputs = {str(n): npz[f"i{k}"] for k, n in enumerate(doc["inputs"])}
                outputs = {str(n): npz[f"o{k}"] for k, n in enumerate(doc["outputs"])}
        except (ValueError, KeyError, TypeError, AttributeError, OSError, binascii.Error) as exc:
            raise InvalidInput(f"the model's '{PROBES_KEY}' metadata is malformed: {exc}") from None
        if not outputs:
            raise InvalidInput(f"the model's '{PROBES_KEY}' metadata lists no outputs")
        return cls(inputs, outputs, tolerance)


def max_errors(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> tuple[float, float]:
    """(largest absolute error, that divided by the largest reference magnitude).

    A NaN or infinity anywhere in the candidate counts as an infinite error."""
    max_abs = 0.0
    max_ref = 0.0
    for a, b in zip(reference, candidate, strict=True):
        a64 = np.asarray(a, dtype=np.float64)
        b64 = np.asarray(b, dtype=np.float64)
        if a64.shape != b64.shape:
            return math.inf, math.inf
        if a64.size == 0:
            continue
        diff = float(np.max(np.abs(a64 - b64)))
        max_abs = max(max_abs, diff if math.isfinite(diff) else math.inf)
        max_ref = max(max_ref, float(np.max(np.abs(a64))))
    if max_ref > 0:
        return max_abs, max_abs / max_ref
    return max_abs, 0.0 if max_abs == 0 else math.inf


def verify(
    probes: ProbeSet,
    run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]],
    what: str,
) -> float:
    """Run the probe inputs; the relative error, or :class:`ProbeMismatch` past tolerance."""
    try:
        got = run(probes.inputs)
        candidate = [got[name] for name in probes.outputs]
    except Exception as exc:  # the engine's own errors: the probes do not fit this model
        raise InvalidInput(f"{what}: its probe inputs do not run: {exc}") from exc
    _, rel = max_errors(list(probes.outputs.values()), candidate)
    if not rel <= probes.tolerance:
        raise ProbeMismatch(
            f"{what} fails its accuracy probes on this host: relative error {rel:.4g} "
            f"exceeds the recorded tolerance {probes.tolerance:.4g}; not serving it"
        )
    return rel


def attach(path: Path, probes: ProbeSet) -> None:
    """Write ``probes`` into the ONNX model at ``path`` (replacing any already there)."""
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != PROBES_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, (PROBES_KEY, probes.encode())]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
