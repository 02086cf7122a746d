"""Text in, embeddings out: BYTES tensors through tritonclient over REST and gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.worker.conftest import WorkerProcess, running_worker
from tests.worker.text_model import build_text_model, reference

TEXTS = ["hello world", "fast inference across regions", "unknown words here"]


@pytest.fixture(scope="module")
def text_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, np.ndarray]]:
    directory = tmp_path_factory.mktemp("text")
    table = build_text_model(directory / "text.onnx")
    with running_worker([f"text:1={directory / 'text.onnx'}"], directory) as worker:
        yield worker, table


def _expected(table: np.ndarray) -> np.ndarray:
    return np.stack([reference(table, t) for t in TEXTS])


def test_metadata_shows_one_text_input(text_worker) -> None:
    worker, _ = text_worker
    meta = httpx.get(f"{worker.http_url}/v2/models/text").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["name"] == "embedding"


@pytest.mark.parametrize("binary", [True, False])
def test_http_text_embeddings(text_worker, binary: bool) -> None:
    import tritonclient.http as http

    worker, table = text_worker
    client = http.InferenceServerClient(worker.http_address)
    inp = http.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(
        np.array([t.encode() for t in TEXTS], dtype=np.object_), binary_data=binary
    )
    result = client.infer(
        "text", [inp], outputs=[http.InferRequestedOutput("embedding", binary_data=binary)]
    )
    np.testing.assert_allclose(result.as_numpy("embedding"), _expected(table), rtol=1e-5, atol=1e-6)


def test_grpc_text_embeddings(text_worker) -> None:
    import tritonclient.grpc as grpcclient

    worker, table = text_worker
    client = grpcclient.InferenceServerClient(worker.grpc_address)
    inp = grpcclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=np.object_))
    result = client.infer("text", [inp])
    np.testing.assert_allclose(result.as_numpy("embedding"), _expected(table), rtol=1e-5, atol=1e-6)


def test_bad_bytes_are_a_400_naming_the_tensor(text_worker) -> None:
    worker, _ = text_worker
    body = (
        b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[2],'
        b'"parameters":{"binary_data_size":6}}]}'
    )
    r = httpx.post(
        f"{worker.http_url}/v2/models/text/infer",
        content=body + b"\x09\x00\x00\x00ab",  # claims 9 bytes, has 2
        headers={"Inference-Header-Content-Length": str(len(body))},
    )
    assert r.status_code == 400
    assert "'text'" in r.json()["error"]
    r = httpx.post(
        f"{worker.http_url}/v2/models/text/infer",
        json={"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [5]}]},
    )
    assert r.status_code == 400 and "strings" in r.json()["error"]


def test_capacity_is_reported_for_the_region_agent(text_worker) -> None:
    worker, _ = text_worker
    stats = httpx.get(f"{worker.http_url}/v2/stats").json()
    # the warm-up run at load time seeds what the region agent reports as capacity
    assert stats["capacity_rps"] > 0
    assert stats["models"]["text:1"]["capacity_rps"] == stats["capacity_rps"]
