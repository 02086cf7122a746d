"""gRPC converters for generative models: ``ModelInferRequest`` in, a stream of
``ModelStreamInferResponse`` out (decoupled, as Triton streams a generative model).

The prompt is the BYTES input ``text_input``. Sampling parameters come from, in
rising precedence: a BYTES input ``sampling_parameters`` holding a JSON object,
scalar inputs named like the parameters (``max_tokens``, ``temperature``...), and
the request's ``parameters``. ``stream`` false (a parameter or a BOOL input)
answers with one response holding the whole text.

Each response carries the new text as the BYTES output ``text_output`` and the
parameter ``triton_final_response`` (true on the last one, which also has
``finish_reason`` and the token counts). A client that asks for
``triton_enable_empty_final_response`` gets the last response without outputs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import orjson

from meridian.errors import InvalidInput
from proto import grpc_service_pb2 as pb
from worker.generation.types import TokenEvent
from worker.generative import TEXT_INPUT, TEXT_OUTPUT
from worker.grpc_codec import decode_infer

__all__ = ["GenerateCall", "decode_generate", "encode_error", "encode_step", "infer_parameters"]

_EMPTY_FINAL = "triton_enable_empty_final_response"
_FINAL = "triton_final_response"


@dataclass(frozen=True)
class GenerateCall:
    text: str
    parameters: dict[str, Any]
    stream: bool
    empty_final: bool


def infer_parameters(params: Any) -> dict[str, Any]:
    """``map<string, InferParameter>`` as plain values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(value, which)
    return out


def decode_generate(msg: pb.ModelInferRequest) -> GenerateCall:
    request = decode_infer(msg, None)
    text: str | None = None
    params: dict[str, Any] = {}
    scalars: dict[str, Any] = {}
    for tensor in request.inputs:
        array = tensor.array
        if array.size != 1:
            raise InvalidInput(f"input '{tensor.name}' must hold one element, got {array.size}")
        value = array.reshape(-1)[0]
        if tensor.name in (TEXT_INPUT, "sampling_parameters"):
            if tensor.datatype != "BYTES":
                raise InvalidInput(f"input '{tensor.name}' must be BYTES")
            try:
                decoded = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInput(f"input '{tensor.name}' is not UTF-8 text") from None
            if tensor.name == TEXT_INPUT:
                text = decoded
            else:
                try:
                    loaded = orjson.loads(decoded) if decoded else {}
                except orjson.JSONDecodeError:
                    raise InvalidInput("input 'sampling_parameters' is not JSON") from None
                if not isinstance(loaded, dict):
                    raise InvalidInput("input 'sampling_parameters' must be a JSON object")
                params.update(loaded)
        elif tensor.datatype == "BYTES":
            scalars[tensor.name] = bytes(value).decode("utf-8", "replace")
        else:
            scalars[tensor.name] = value.item()
    if text is None:
        raise InvalidInput(f"a generative model needs the BYTES input '{TEXT_INPUT}'")
    params.update(scalars)
    params.update(infer_parameters(msg.parameters))
    stream = params.pop("stream", True)
    empty_final = bool(params.pop(_EMPTY_FINAL, False))
    if not isinstance(stream, bool):
        raise InvalidInput("parameter 'stream' must be true or false")
    return GenerateCall(text, params, stream, empty_final)


def _bytes_tensor(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def encode_step(
    model: str,
    version: str,
    request_id: str,
    text: str | None,
    final: TokenEvent | None,
) -> pb.ModelStreamInferResponse:
    """One response: ``text`` as ``text_output`` (none when None), and, when
    ``final`` is the last event, the finish reason and token counts."""
    response = pb.ModelInferResponse(model_name=model, model_version=version, id=request_id)
    if text is not None:
        out = response.outputs.add()
        out.name = TEXT_OUTPUT
        out.datatype = "BYTES"
        out.shape.append(1)
        response.raw_output_contents.append(_bytes_tensor(text))
    response.parameters[_FINAL].bool_param = final is not None
    if final is not None:
        response.parameters["finish_reason"].string_param = final.finish_reason or ""
        response.parameters["prompt_tokens"].int64_param = final.prompt_tokens
        response.parameters["completion_tokens"].int64_param = final.completion_tokens
        response.parameters["cached_tokens"].int64_param = final.cached_tokens
    return pb.ModelStreamInferResponse(infer_response=response)


def encode_error(msg: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    response = pb.ModelInferResponse(
        model_name=msg.model_name, model_version=msg.model_version, id=msg.id
    )
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)
