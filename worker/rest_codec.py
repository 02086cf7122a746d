"""REST converters: OIP JSON bodies, with the binary tensor data extension, to and
from :mod:`worker.tensors` objects.

A binary request carries ``Inference-Header-Content-Length: N``: the first N
bytes are the JSON header, the rest the concatenated tensor bytes, each input
declaring its size in ``parameters.binary_data_size``. Outputs are returned in
binary when the output asks for ``binary_data`` or the request for
``binary_data_output``. Binary inputs become numpy views over the body (no copy).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from meridian.errors import InvalidInput, MeridianError
from worker.tensors import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
    array_from_bytes,
    array_from_list,
    datatype_of,
)

__all__ = ["HEADER_LENGTH", "InferDecoder", "decode_infer", "encode_infer", "error_body"]

HEADER_LENGTH = "inference-header-content-length"
JSON = "application/json"


def error_body(exc: MeridianError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """Status, JSON body and headers for a domain error (the one REST encoding)."""
    body: dict[str, object] = {"error": exc.message, "code": exc.code}
    headers = [(b"content-type", JSON.encode())]
    if exc.retry_after is not None:
        body["retry_after"] = exc.retry_after
        headers.append((b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode()))
    return exc.status, orjson.dumps(body), headers


def parse_header_length(value: str | None, body_size: int) -> int | None:
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"Inference-Header-Content-Length '{value}' is not a byte count")
    n = int(value)
    if n > body_size:
        raise InvalidInput(f"Inference-Header-Content-Length {n} exceeds the body size {body_size}")
    return n


def _params(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}: 'parameters' must be an object")
    return params


def decode_infer(
    body: bytes, header_length: int | None, model: str, version: str | None
) -> InferenceRequest:
    """The request in ``body`` (its first ``header_length`` bytes JSON, when given)."""
    return _decode(body, header_length, model, version, None)


def _decode(
    body: bytes,
    header_length: int | None,
    model: str,
    version: str | None,
    layout: list[_Slot | None] | None,
) -> InferenceRequest:
    """:func:`decode_infer`; when ``layout`` is a list, also appends where each
    input's bytes lie (None for inputs given as JSON data)."""
    view = memoryview(body)
    head = view if header_length is None else view[:header_length]
    try:
        doc = orjson.loads(head)
    except orjson.JSONDecodeError:
        raise InvalidInput("request header is not valid JSON") from None
    if not isinstance(doc, dict):
        raise InvalidInput("request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("request needs a non-empty 'inputs' list")
    binary = view[header_length:] if header_length is not None else view[:0]
    offset = 0
    inputs: list[InputTensor] = []
    for i, item in enumerate(raw_inputs):
        if not isinstance(item, dict):
            raise InvalidInput(f"inputs[{i}] must be an object")
        name = item.get("name")
        datatype = item.get("datatype")
        shape = item.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"inputs[{i}] needs a 'name'")
        if not isinstance(datatype, str):
            raise InvalidInput(f"tensor '{name}': needs a 'datatype'")
        if not isinstance(shape, list):
            raise InvalidInput(f"tensor '{name}': needs a 'shape' list")
        params = _params(item, f"tensor '{name}'")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInput(f"tensor '{name}': binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise InvalidInput(
                    f"tensor '{name}': binary_data_size {size} runs past the end of the "
                    f"binary data ({len(binary) - offset} bytes left)"
                )
            array = array_from_bytes(binary[offset : offset + size], datatype, shape, name)
            if layout is not None:
                binary_slot = array.dtype != object
                layout.append(_Slot(name, datatype, array, offset) if binary_slot else None)
            offset += size
        elif "data" in item:
            array = array_from_list(item["data"], datatype, shape, name)
            if layout is not None:
                layout.append(None)
        else:
            raise InvalidInput(f"tensor '{name}': needs 'data' or a binary_data_size parameter")
        inputs.append(InputTensor(name, datatype, array))
    if offset != len(binary):
        raise InvalidInput(f"{len(binary) - offset} bytes of binary data belong to no input")
    params = _params(doc, "request")
    outputs: list[RequestedOutput] = []
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list")
    default_binary = bool(params.get("binary_data_output", False))
    for i, item in enumerate(raw_outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput(f"outputs[{i}] needs a 'name'")
        oparams = _params(item, f"output '{item['name']}'")
        outputs.append(
            RequestedOutput(item["name"], bool(oparams.get("binary_data", default_binary)))
        )
    timeout_us = params.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or timeout_us <= 0):
        raise InvalidInput("request parameter 'timeout' must be a positive number of microseconds")
    request_id = doc.get("id", "")
    return InferenceRequest(
        model=model,
        version=version,
        inputs=inputs,
        outputs=outputs,
        id=request_id if isinstance(request_id, str) else str(request_id),
        binary_output=default_binary,
        timeout_s=timeout_us / 1e6 if timeout_us else None,
    )


class _Slot:
    """Where one binary input lies in the binary part of a request."""

    __slots__ = ("count", "datatype", "dtype", "name", "offset", "shape")

    def __init__(self, name: str, datatype: str, array: np.ndarray, offset: int) -> None:
        self.name = name
        self.datatype = datatype
        self.dtype = array.dtype  # the array itself is not kept
        self.shape = array.shape
        self.count = array.size
        self.offset = offset


class _Plan:
    """A binary request header decoded once: its requests differ only in their
    tensor bytes, which become arrays without parsing the header again."""

    __slots__ = ("binary_output", "binary_size", "id", "outputs", "slots", "timeout_s")

    def __init__(self, request: InferenceRequest, slots: list[_Slot], binary_size: int) -> None:
        # Everything but the tensors: a plan must not keep a request body alive.
        self.outputs = request.outputs
        self.id = request.id
        self.binary_output = request.binary_output
        self.timeout_s = request.timeout_s
        self.slots = slots
        self.binary_size = binary_size

    def decode(
        self, body: bytes, header_length: int, model: str, version: str | None
    ) -> InferenceRequest | None:
        if len(body) - header_length != self.binary_size:
            return None  # let the full decoder say what is wrong
        return InferenceRequest(
            model,
            version,
            [
                InputTensor(
                    slot.name,
                    slot.datatype,
                    np.frombuffer(
                        body, slot.dtype, slot.count, header_length + slot.offset
                    ).reshape(slot.shape),
                )
                for slot in self.slots
            ],
            self.outputs,
            self.id,
            self.binary_output,
            self.timeout_s,
        )


class InferDecoder:
    """:func:`decode_infer` that remembers recent binary request headers.

    A client sending many requests of one shape repeats the same JSON header; a
    repeat skips the JSON parsing and checks and only maps the tensor bytes.
    Headers are keyed by their exact bytes (a request id makes each one new);
    at most ``size`` headers of up to ``max_header_bytes`` are kept, forgotten all
    at once when full."""

    def __init__(self, size: int = 256, max_header_bytes: int = 4096) -> None:
        self._size = size
        self._max_header_bytes = max_header_bytes
        self._plans: dict[bytes, _Plan] = {}

    def decode(
        self, body: bytes, header_length: int | None, model: str, version: str | None
    ) -> InferenceRequest:
        if header_length is None or header_length > self._max_header_bytes:
            return _decode(body, header_length, model, version, None)
        head = body[:header_length]
        plan = self._plans.get(head)
        if plan is not None:
            request = plan.decode(body, header_length, model, version)
            if request is not None:
                return request
        layout: list[_Slot | None] = []
        request = _decode(body, header_length, model, version, layout)
        slots = [slot for slot in layout if slot is not None]
        if len(slots) == len(layout):
            if len(self._plans) >= self._size:
                self._plans.clear()
            self._plans[head] = _Plan(request, slots, len(body) - header_length)
        return request


def encode_infer(
    response: InferenceResponse, request: InferenceRequest
) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, its JSON header length."""
    binary_for = {o.name: o.binary for o in request.outputs}
    outputs: list[dict[str, Any]] = []
    blobs: list[memoryview] = []
    for name, array in response.outputs.items():
        if array.dtype == np.float16 and not binary_for.get(name, request.binary_output):
            array = array.astype(np.float32)
            datatype = "FP16"
        else:
            datatype = datatype_of(array)
        array = np.ascontiguousarray(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary_for.get(name, request.binary_output):
            entry["parameters"] = {"binary_data_size": array.nbytes}
            blobs.append(array.data.cast("B"))
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model,
        "model_version": response.version,
        "outputs": outputs,
    }
    if response.id:
        doc["id"] = response.id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
