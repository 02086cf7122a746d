"""gRPC converters: ``inference.*`` protobuf messages to and from
:mod:`worker.tensors` objects. Raw tensor bytes (``raw_input_contents``) become
numpy views; outputs always travel as ``raw_output_contents``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from meridian.errors import InvalidInput
from proto import grpc_service_pb2 as pb
from worker.tensors import (
    InferenceRequest,
    InferenceResponse,
    InputTensor,
    RequestedOutput,
    array_from_bytes,
    array_from_list,
    datatype_of,
)

__all__ = ["decode_infer", "encode_infer", "encode_model_metadata", "repository_parameters"]

# Which typed-contents field carries each datatype.
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def decode_infer(msg: pb.ModelInferRequest, timeout_s: float | None) -> InferenceRequest:
    raw = msg.raw_input_contents
    if raw and len(raw) != len(msg.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents entries for {len(msg.inputs)} inputs")
    inputs: list[InputTensor] = []
    for i, t in enumerate(msg.inputs):
        if not t.name:
            raise InvalidInput(f"inputs[{i}] needs a name")
        shape = list(t.shape)
        if raw:
            array = array_from_bytes(raw[i], t.datatype, shape, t.name)
        else:
            field = _CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InvalidInput(
                    f"tensor '{t.name}': {t.datatype or 'no datatype'} data must be sent "
                    "in raw_input_contents"
                )
            array = array_from_list(list(getattr(t.contents, field)), t.datatype, shape, t.name)
        inputs.append(InputTensor(t.name, t.datatype, array))
    if not inputs:
        raise InvalidInput("request needs at least one input")
    return InferenceRequest(
        model=msg.model_name,
        version=msg.model_version or None,
        inputs=inputs,
        outputs=[RequestedOutput(o.name, True) for o in msg.outputs],
        id=msg.id,
        binary_output=True,
        timeout_s=timeout_s,
    )


def encode_infer(response: InferenceResponse) -> pb.ModelInferResponse:
    msg = pb.ModelInferResponse(
        model_name=response.model, model_version=response.version, id=response.id
    )
    for name, array in response.outputs.items():
        out = msg.outputs.add()
        out.name = name
        out.datatype = datatype_of(array)
        out.shape.extend(array.shape)
        msg.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return msg


def encode_model_metadata(meta: Mapping[str, Any]) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(
        name=meta["name"], versions=meta["versions"], platform=meta["platform"]
    )
    for target, specs in ((msg.inputs, meta["inputs"]), (msg.outputs, meta["outputs"])):
        for spec in specs:
            target.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
    return msg


def repository_parameters(params: Mapping[str, pb.ModelRepositoryParameter]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        if which is None:
            continue
        v = getattr(value, which)
        out[key] = v.decode() if isinstance(v, bytes) else v
    return out
