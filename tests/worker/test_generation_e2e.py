"""A real ``meridian worker`` serving a tiny GPT-2 (the real generation engine) and a
text-embedding model, spoken to by the official ``openai`` client and by
tritonclient over HTTP and gRPC (streaming)."""

from __future__ import annotations

import queue
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.worker.conftest import MANAGE, WorkerProcess, running_worker
from tests.worker.generation.tiny import build_tiny_gpt2
from tests.worker.text_model import build_text_model, reference

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def lm_worker(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[WorkerProcess, Path, np.ndarray]]:
    root = tmp_path_factory.mktemp("lm")
    lm = build_tiny_gpt2(root / "tiny")
    table = build_text_model(root / "text.onnx")
    models = [f"tiny:1={lm}", f"text:1={root / 'text.onnx'}"]
    with running_worker(models, root) as worker:
        yield worker, lm, table


@pytest.fixture
def client(lm_worker: tuple[WorkerProcess, Path, np.ndarray]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=lm_worker[0].http_url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def test_openai_completion_chat_and_stream(client: openai.OpenAI) -> None:
    whole = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    assert whole.choices[0].finish_reason in ("length", "stop")
    stream = client.completions.create(
        model="tiny",
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text  # greedy: the same tokens either way
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices]) >= 2  # token by token, not one block

    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Open the file"}], max_tokens=8
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 8


def test_openai_models_and_embeddings(
    client: openai.OpenAI, lm_worker: tuple[WorkerProcess, Path, np.ndarray]
) -> None:
    assert sorted(m.id for m in client.models.list()) == ["text", "tiny"]
    result = client.embeddings.create(model="text", input=["hello world", "fast"])
    expected = [reference(lm_worker[2], t) for t in ("hello world", "fast")]
    for got, want in zip(result.data, expected, strict=True):
        assert got.embedding == pytest.approx(want.tolist(), abs=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", n=3)
    assert isinstance(e.value.body, dict) and e.value.body["param"] == "n"


def _grpc_input(text: str) -> grpcclient.InferInput:
    inp = grpcclient.InferInput("text_input", [1], "BYTES")
    inp.set_data_from_numpy(np.array([text.encode()], dtype=object))
    return inp


def test_grpc_stream_infer_and_http_generate(
    lm_worker: tuple[WorkerProcess, Path, np.ndarray],
) -> None:
    worker = lm_worker[0]
    responses: queue.Queue[tuple[object, object]] = queue.Queue()
    grpc = grpcclient.InferenceServerClient(worker.grpc_address)
    grpc.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        grpc.async_stream_infer(
            "tiny",
            [_grpc_input(PROMPT)],
            request_id="g-1",
            parameters={"max_tokens": 10, "temperature": 0.0, "ignore_eos": True},
        )
        pieces: list[str] = []
        final = False
        while not final:
            result, error = responses.get(timeout=60)
            assert error is None, error
            assert isinstance(result, grpcclient.InferResult)
            response = result.get_response()
            assert response.id == "g-1"
            final = response.parameters["triton_final_response"].bool_param
            if final:
                assert response.parameters["completion_tokens"].int64_param == 10
            pieces.append(result.as_numpy("text_output")[0].decode())
        grpc.async_stream_infer("nope", [_grpc_input("x")])
        _, error = responses.get(timeout=60)
        assert isinstance(error, InferenceServerException) and "nope" in error.message()
    finally:
        grpc.stop_stream()
        grpc.close()
    # One response per step that produced text (a step may hold back a partial character).
    assert 2 <= len(pieces) <= 10
    http = httpclient.InferenceServerClient(worker.http_address)
    answer = httpx.post(
        f"{worker.http_url}/v2/models/tiny/generate",
        json={"text_input": PROMPT, "parameters": {"max_tokens": 10, "temperature": 0,
                                                    "ignore_eos": True}},
        timeout=60,
    ).json()  # fmt: skip
    assert answer["text_output"] == "".join(pieces)
    assert answer["completion_tokens"] == 10
    config = http.get_model_config("tiny")
    assert config["model_transaction_policy"] == {"decoupled": True}
    stats = http.get_inference_statistics("tiny")["model_stats"][0]
    assert stats["inference_count"] >= 2
    http.close()


def test_grpc_config_statistics_and_index(
    lm_worker: tuple[WorkerProcess, Path, np.ndarray],
) -> None:
    worker = lm_worker[0]
    grpc = grpcclient.InferenceServerClient(worker.grpc_address)
    x = grpcclient.InferInput("text", [1], "BYTES")
    x.set_data_from_numpy(np.array([b"hello"], dtype=object))
    grpc.infer("text", [x])
    config = grpc.get_model_config("text", as_json=True)["config"]
    assert config["max_batch_size"] > 0
    assert config["input"][0]["name"] == "text"
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    stats = grpc.get_inference_statistics("text", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) >= 1
    assert int(stats["inference_stats"]["success"]["count"]) >= 1
    index = grpc.get_model_repository_index(as_json=True)["models"]
    assert {(m["name"], m["state"]) for m in index} == {("text", "READY"), ("tiny", "READY")}
    assert "statistics" in grpc.get_server_metadata().extensions
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_config("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"
    # Unary inference on a generative model answers the whole text at once.
    params = {"max_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    whole = grpc.infer("tiny", [_grpc_input(PROMPT)], parameters=params)
    generated = httpx.post(
        f"{worker.http_url}/v2/models/tiny/generate",
        json={"text_input": PROMPT, "parameters": params},
        timeout=60,
    ).json()
    assert whole.as_numpy("text_output")[0].decode() == generated["text_output"]
    assert whole.get_response().parameters["completion_tokens"].int64_param == 5
    grpc.close()


def test_metrics_after_generation(lm_worker: tuple[WorkerProcess, Path, np.ndarray]) -> None:
    worker = lm_worker[0]
    httpx.post(
        f"{worker.http_url}/v2/models/tiny/generate",
        json={"text_input": PROMPT, "max_tokens": 4},
        timeout=60,
    ).raise_for_status()
    text = httpx.get(f"{worker.http_url}/metrics").text
    for name in (
        "meridian_worker_time_to_first_token_seconds_count",
        "meridian_worker_time_per_output_token_seconds_count",
        "meridian_worker_generation_seconds_count",
        "meridian_worker_generation_running",
        "meridian_worker_kv_blocks_total",
        "meridian_worker_prefix_cache_hit_rate",
        "meridian_worker_decode_tokens_total",
        "meridian_worker_preemptions_total",
    ):
        assert f'{name}{{model="tiny:1"}}' in text, name


def test_load_an_archived_model(lm_worker: tuple[WorkerProcess, Path, np.ndarray]) -> None:
    """A tar.gz of the model folder loads through the repository API and answers."""
    worker, lm, _ = lm_worker
    archive = lm.parent / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(lm, arcname="tiny")
    response = httpx.post(
        f"{worker.http_url}/v2/repository/models/tiny2/load",
        json={"parameters": {"path": str(archive), "format": "generative"}},
        headers=MANAGE,
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["sha256"]) == 64
    answer = httpx.post(
        f"{worker.http_url}/v2/models/tiny2/generate",
        json={"text_input": PROMPT, "max_tokens": 3, "temperature": 0},
        timeout=60,
    ).json()
    reference_answer = httpx.post(
        f"{worker.http_url}/v2/models/tiny/generate",
        json={"text_input": PROMPT, "max_tokens": 3, "temperature": 0},
        timeout=60,
    ).json()
    assert answer["text_output"] == reference_answer["text_output"]
    unload = f"{worker.http_url}/v2/repository/models/tiny2/unload"
    httpx.post(unload, headers=MANAGE).raise_for_status()
