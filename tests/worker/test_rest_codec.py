"""Decoding binary requests: a repeated header is decoded once, answers stay the same."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from meridian.errors import InvalidInput
from worker.rest_codec import InferDecoder, decode_infer


def _binary(arrays: dict[str, np.ndarray], extra: bytes = b"") -> tuple[bytes, int]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                    "shape": list(a.shape),
                    "parameters": {"binary_data_size": a.nbytes},
                }
                for name, a in arrays.items()
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            "parameters": {"timeout": 2_000_000},
        }
    )
    return header + b"".join(a.tobytes() for a in arrays.values()) + extra, len(header)


def test_a_repeated_header_maps_each_request_s_own_bytes() -> None:
    decoder = InferDecoder()
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.standard_normal((2, 3)).astype(np.float32)
        ids = rng.integers(0, 9, (2, 1))
        body, n = _binary({"x": x, "ids": ids})
        got = decoder.decode(body, n, "m", "2")
        want = decode_infer(body, n, "m", "2")
        assert (got.model, got.version, got.id, got.timeout_s) == ("m", "2", "", 2.0)
        assert got.outputs == want.outputs
        for g, w, a in zip(got.inputs, want.inputs, (x, ids), strict=True):
            assert (g.name, g.datatype) == (w.name, w.datatype)
            np.testing.assert_array_equal(g.array, a)
            assert g.array.dtype == a.dtype and not g.array.flags.writeable


def test_a_repeated_header_with_wrong_bytes_gets_the_full_error() -> None:
    decoder = InferDecoder()
    x = np.ones((1, 4), np.float32)
    body, n = _binary({"x": x})
    decoder.decode(body, n, "m", None)
    for bad, message in ((body[:-4], "runs past the end"), (body + b"\0" * 4, "belong to no")):
        with pytest.raises(InvalidInput, match=message):
            decoder.decode(bad, n, "m", None)


def test_json_data_and_bytes_tensors_are_decoded_every_time() -> None:
    decoder = InferDecoder(size=2)
    text = b"\x02\x00\x00\x00hi"
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 6},
                },
                {"name": "k", "datatype": "INT64", "shape": [1], "data": [7]},
            ]
        }
    )
    for _ in range(2):
        request = decoder.decode(header + text, len(header), "m", None)
        assert request.inputs[0].array.tolist() == [b"hi"]
        assert request.inputs[1].array.tolist() == [7]
    # More distinct headers than the decoder keeps: still decoded correctly.
    for rows in range(1, 6):
        body, n = _binary({"x": np.full((rows, 2), rows, np.float32)})
        assert decoder.decode(body, n, "m", None).inputs[0].array.sum() == rows * rows * 2
