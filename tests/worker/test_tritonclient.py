"""The worker against the third-party Triton clients, over real sockets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker.conftest import MANAGE, WorkerProcess
from tests.worker.models import BuiltModels, onnx_reference, torchscript_reference


@pytest.fixture(scope="module")
def http(worker_process: WorkerProcess) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(worker_process.http_address)


@pytest.fixture(scope="module")
def grpc(worker_process: WorkerProcess) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(worker_process.grpc_address)


def _rows(n: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(n).standard_normal((n, *shape)).astype(np.float32)


def test_http_health_and_metadata(http: httpclient.InferenceServerClient) -> None:
    assert http.is_server_live() and http.is_server_ready()
    meta = http.get_server_metadata()
    assert meta["name"] == "meridian-worker"
    assert "binary_tensor_data" in meta["extensions"]
    model = http.get_model_metadata("cnn")
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert model["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 5]}]
    assert http.is_model_ready("mlp", "1")
    assert not http.is_model_ready("mlp", "7")


def test_grpc_health_and_metadata(grpc: grpcclient.InferenceServerClient) -> None:
    assert grpc.is_server_live() and grpc.is_server_ready()
    assert "model_repository" in grpc.get_server_metadata().extensions
    meta = grpc.get_model_metadata("mlp", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}
    assert grpc.is_model_ready("mlp")
    assert not grpc.is_model_ready("missing")


@pytest.mark.parametrize("binary", [True, False])
def test_http_infer_matches_engine(
    http: httpclient.InferenceServerClient, models: BuiltModels, binary: bool
) -> None:
    x = _rows(5, 3, 8, 8)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = http.infer("cnn", [inp], outputs=[out], request_id="r-1")
    np.testing.assert_allclose(
        result.as_numpy("output"), onnx_reference(models.cnn_onnx, x), rtol=1e-5, atol=1e-6
    )
    assert result.get_response()["id"] == "r-1"


def test_grpc_infer_matches_engine(
    grpc: grpcclient.InferenceServerClient, models: BuiltModels
) -> None:
    x = _rows(7, 16)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = grpc.infer("mlp", [inp], model_version="1")
    np.testing.assert_allclose(
        result.as_numpy("output"), onnx_reference(models.mlp_onnx, x), rtol=1e-5, atol=1e-6
    )


def test_torchscript_model_over_both_transports(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    models: BuiltModels,
) -> None:
    x = _rows(3, 16)
    expected = torchscript_reference(models.mlp_torchscript, x)
    hin = httpclient.InferInput("input", [3, 16], "FP32")
    hin.set_data_from_numpy(x)
    gin = grpcclient.InferInput("input", [3, 16], "FP32")
    gin.set_data_from_numpy(x)
    np.testing.assert_allclose(http.infer("mlp_ts", [hin]).as_numpy("output"), expected, rtol=1e-5)
    np.testing.assert_allclose(grpc.infer("mlp_ts", [gin]).as_numpy("output"), expected, rtol=1e-5)
    assert http.get_model_metadata("mlp_ts")["platform"] == "pytorch_libtorch"


def test_unknown_model_is_404_and_not_found(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    x = _rows(1, 16)
    hin = httpclient.InferInput("input", [1, 16], "FP32")
    hin.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        http.infer("nope", [hin])
    assert e.value.status() == "404" and "nope" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.infer("mlp", [hin], model_version="9")
    assert e.value.status() == "404"
    gin = grpcclient.InferInput("input", [1, 16], "FP32")
    gin.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("nope", [gin])
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_wrong_shape_and_dtype_name_the_tensor(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    bad_shape = np.zeros((2, 15), np.float32)
    hin = httpclient.InferInput("input", [2, 15], "FP32")
    hin.set_data_from_numpy(bad_shape)
    with pytest.raises(InferenceServerException) as e:
        http.infer("mlp", [hin])
    assert e.value.status() == "400"
    assert "'input'" in e.value.message() and "[-1, 16]" in e.value.message()

    bad_dtype = np.zeros((2, 16), np.float64)
    gin = grpcclient.InferInput("input", [2, 16], "FP64")
    gin.set_data_from_numpy(bad_dtype)
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("mlp", [gin])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "'input'" in e.value.message() and "FP32" in e.value.message()

    other = httpclient.InferInput("features", [2, 16], "FP32")
    other.set_data_from_numpy(np.zeros((2, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        http.infer("mlp", [other])
    assert e.value.status() == "400" and "'features'" in e.value.message()


def test_load_and_unload_through_both_clients(
    http: httpclient.InferenceServerClient,
    grpc: grpcclient.InferenceServerClient,
    models: BuiltModels,
) -> None:
    config = json.dumps({"path": str(models.cnn_onnx), "version": "4"})
    grpc.load_model("cnn_copy", config=config, headers=MANAGE)
    assert grpc.is_model_ready("cnn_copy", "4")
    x = _rows(2, 3, 8, 8)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    np.testing.assert_allclose(
        http.infer("cnn_copy", [inp]).as_numpy("output"),
        onnx_reference(models.cnn_onnx, x),
        rtol=1e-5,
        atol=1e-6,
    )
    http.unload_model("cnn_copy", headers=MANAGE)
    assert not grpc.is_model_ready("cnn_copy", "4")
    http.load_model("cnn_copy", config=config, headers=MANAGE)
    assert http.is_model_ready("cnn_copy")
    grpc.unload_model("cnn_copy", headers=MANAGE)
    assert not http.is_model_ready("cnn_copy")
    with pytest.raises(InferenceServerException) as e:
        grpc.load_model(
            "cnn_copy", config=json.dumps({"path": "/no/such/file.onnx"}), headers=MANAGE
        )
    assert e.value.status() == "StatusCode.NOT_FOUND"
