"""Tensors as the Open Inference Protocol describes them, and their numpy forms.

Both transports decode requests into :class:`InferenceRequest` and encode
:class:`InferenceResponse`; the data plane only ever sees numpy arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from meridian.errors import InvalidInput

__all__ = [
    "DATATYPE_TO_NUMPY",
    "InferenceRequest",
    "InferenceResponse",
    "InputTensor",
    "RequestedOutput",
    "TensorSpec",
    "array_from_bytes",
    "array_from_list",
    "datatype_of",
    "numpy_dtype",
    "sample_inputs",
]

# OIP datatype -> numpy dtype (little-endian, as the protocol's raw form is).
DATATYPE_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NUMPY_TO_DATATYPE = {dt.str: name for name, dt in DATATYPE_TO_NUMPY.items()}
_NUMPY_TO_DATATYPE[np.dtype(np.bool_).str] = "BOOL"


def numpy_dtype(datatype: str, tensor: str) -> np.dtype[Any]:
    """The numpy dtype for an OIP datatype; 400 naming the tensor when unsupported."""
    try:
        return DATATYPE_TO_NUMPY[datatype]
    except KeyError:
        supported = ", ".join(DATATYPE_TO_NUMPY)
        raise InvalidInput(
            f"tensor '{tensor}': datatype '{datatype}' is not supported (one of {supported})"
        ) from None


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array."""
    dt = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    try:
        return _NUMPY_TO_DATATYPE[dt.str]
    except KeyError:
        raise TypeError(f"numpy dtype {array.dtype} has no OIP datatype") from None


def _check_shape(shape: list[int] | tuple[int, ...], tensor: str) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise InvalidInput(f"tensor '{tensor}': shape must be a list of non-negative integers")
    return tuple(shape)


def array_from_bytes(
    data: bytes | bytearray | memoryview,
    datatype: str,
    shape: list[int] | tuple[int, ...],
    tensor: str,
) -> np.ndarray:
    """A read-only view over raw little-endian tensor bytes (no copy).

    BYTES tensors are a sequence of elements, each a 4-byte little-endian length
    followed by that many bytes; they become an object array of ``bytes``.
    """
    if datatype == "BYTES":
        return _bytes_elements(data, _check_shape(shape, tensor), tensor)
    dtype = numpy_dtype(datatype, tensor)
    dims = _check_shape(shape, tensor)
    count = math.prod(dims)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidInput(
            f"tensor '{tensor}': {len(data)} bytes of data, expected {expected} "
            f"for {datatype} with shape {list(dims)}"
        )
    return np.frombuffer(data, dtype=dtype, count=count).reshape(dims)


def array_from_list(
    data: Any, datatype: str, shape: list[int] | tuple[int, ...], tensor: str
) -> np.ndarray:
    """An array from JSON data (flat or nested lists) checked against ``shape``."""
    if datatype == "BYTES":
        return _bytes_from_list(data, _check_shape(shape, tensor), tensor)
    dtype = numpy_dtype(datatype, tensor)
    dims = _check_shape(shape, tensor)
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"tensor '{tensor}': data is not a list of {datatype} values") from exc
    count = math.prod(dims)
    if array.size != count:
        raise InvalidInput(
            f"tensor '{tensor}': {array.size} values, expected {count} for shape {list(dims)}"
        )
    return array.reshape(dims)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model. ``-1`` marks a variable dimension;
    ``shape`` is None when the model does not say (TorchScript without signature)."""

    name: str
    datatype: str
    shape: tuple[int, ...] | None

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape or (-1,))}


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    array: np.ndarray


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False


@dataclass(slots=True)
class InferenceRequest:
    model: str
    version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str = ""
    binary_output: bool = False
    timeout_s: float | None = None


@dataclass(slots=True)
class InferenceResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    id: str = ""


def _bytes_elements(
    data: bytes | bytearray | memoryview, dims: tuple[int, ...], tensor: str
) -> np.ndarray:
    raw = bytes(data)
    count = math.prod(dims)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"tensor '{tensor}': BYTES data ends after {i} of {count} elements")
        n = int.from_bytes(raw[pos : pos + 4], "little")
        pos += 4
        if pos + n > len(raw):
            raise InvalidInput(f"tensor '{tensor}': BYTES element {i} runs past the data")
        out[i] = raw[pos : pos + n]
        pos += n
    if pos != len(raw):
        raise InvalidInput(f"tensor '{tensor}': {len(raw) - pos} bytes after the last element")
    return out.reshape(dims)


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list | tuple):
        return [x for item in data for x in _flatten(item)]
    return [data]


def _bytes_from_list(data: Any, dims: tuple[int, ...], tensor: str) -> np.ndarray:
    items = _flatten(data)
    count = math.prod(dims)
    if len(items) != count:
        raise InvalidInput(
            f"tensor '{tensor}': {len(items)} values, expected {count} for shape {list(dims)}"
        )
    out = np.empty(count, dtype=object)
    for i, item in enumerate(items):
        if isinstance(item, str):
            out[i] = item.encode("utf-8")
        elif isinstance(item, bytes):
            out[i] = item
        else:
            raise InvalidInput(f"tensor '{tensor}': BYTES values must be strings")
    return out.reshape(dims)


def sample_inputs(specs: list[TensorSpec]) -> dict[str, np.ndarray] | None:
    """One row of placeholder inputs for ``specs`` (zeros, or short text for BYTES), with
    every variable dimension set to 1; None when a shape is unknown."""
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        if spec.shape is None:
            return None
        dims = tuple(1 if d < 0 else d for d in spec.shape) or (1,)
        if spec.datatype == "BYTES":
            out[spec.name] = np.full(dims, b"warm up", dtype=object)
        elif spec.datatype in DATATYPE_TO_NUMPY:
            out[spec.name] = np.zeros(dims, dtype=DATATYPE_TO_NUMPY[spec.datatype])
        else:
            return None
    return out
