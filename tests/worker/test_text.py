"""Text in, embeddings out: BYTES tensors through tritonclient over REST and gRPC."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from meridian.waiting import wait_until
from tests.worker.conftest import ROOT, WorkerProcess, free_port
from tests.worker.text_model import build_text_model, reference

TEXTS = ["hello world", "fast inference across regions", "unknown words here"]


@pytest.fixture(scope="module")
def text_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, np.ndarray]]:
    directory = tmp_path_factory.mktemp("text")
    table = build_text_model(directory / "text.onnx")
    http_port, grpc_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "meridian", "worker", "--http-port", str(http_port),
        "--grpc-port", str(grpc_port), "--engine-threads", "1", "--allow-local-paths",
        "--model", f"text:1={directory / 'text.onnx'}",
    ]  # fmt: skip
    env = {**os.environ, "MERIDIAN_WORKER_CACHE_DIR": str(directory / "cache")}
    log = (directory / "worker.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http_port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited with {proc.returncode}")
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=60, interval=0.1, what="text worker ready")
        yield WorkerProcess(url, f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}"), table
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
