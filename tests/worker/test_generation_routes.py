"""The generation routes over a real socket, with a scripted engine: the OpenAI
routes (through the official client), the OIP generate extension, error shapes,
streaming as it happens, and aborts when the client goes away."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from meridian.waiting import wait_until_async
from tests.worker.fake_generation import FakeEngine
from tests.worker.inprocess import FRONTS, Front, LiveWorker, live_worker
from tests.worker.text_model import build_text_model, reference
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings

REPLY = "Hello there, friend."


@pytest.fixture(params=FRONTS)
async def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[LiveWorker, FakeEngine]]:
    front: Front = request.param
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0)
    dp = DataPlane(settings)
    engine = FakeEngine(REPLY)
    async with live_worker(settings, dp, front) as worker:
        await dp.install_generative("chat", "1", engine)
        yield worker, engine


@pytest.fixture
async def client(served: tuple[LiveWorker, FakeEngine]) -> AsyncIterator[openai.AsyncOpenAI]:
    url = served[0].url + "/v1"
    async with openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        yield client


async def test_completion_and_usage(
    client: openai.AsyncOpenAI, served: tuple[LiveWorker, FakeEngine]
) -> None:
    _, engine = served
    result = await client.completions.create(
        model="chat", prompt="Say hi", max_tokens=5, temperature=0, seed=3, stop=["zz"]
    )
    assert result.choices[0].text == REPLY[:5]
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (6, 5)
    assert result.usage.total_tokens == 11
    params = engine.params[-1]
    assert (params.max_tokens, params.temperature, params.seed, params.stop) == (5, 0, 3, ("zz",))


async def test_chat_uses_the_chat_template_and_stops(
    client: openai.AsyncOpenAI, served: tuple[LiveWorker, FakeEngine]
) -> None:
    _, engine = served
    result = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=25,
        extra_body={"top_k": 5},
    )
    assert result.object == "chat.completion"
    assert result.choices[0].message.role == "assistant"
    assert result.choices[0].message.content == REPLY
    assert result.choices[0].finish_reason == "stop"
    assert engine.decode(engine.prompts[-1]) == "<system>Be brief.<user>Hi<assistant>"
    assert engine.params[-1].top_k == 5 and engine.params[-1].max_tokens == 25


async def test_chat_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas: list[str] = []
    finish: list[str | None] = []
    usage = None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        deltas.append(chunk.choices[0].delta.content or "")
        finish.append(chunk.choices[0].finish_reason)
    assert "".join(deltas) == REPLY[:8]
    assert len(deltas) == 9  # the role chunk, then one per token
    assert finish[-1] == "length" and set(finish[:-1]) == {None}
    assert usage is not None and usage.completion_tokens == 8


async def test_completion_stream_ends_with_done(served: tuple[LiveWorker, FakeEngine]) -> None:
    worker, _ = served
    body = {"model": "chat", "prompt": "x", "max_tokens": 3, "stream": True}
    async with httpx.AsyncClient(base_url=worker.url) as http:
        response = await http.post("/v1/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    texts = [orjson.loads(e[6:])["choices"][0]["text"] for e in events[:-1]]
    assert texts == list(REPLY[:3])


async def test_models_list(client: openai.AsyncOpenAI) -> None:
    models = [m.id async for m in client.models.list()]
    assert models == ["chat"]
    assert (await client.models.retrieve("chat")).id == "chat"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": 2}, "logprobs"),
        ({"echo": True}, "echo"),
        ({"temperature": 5}, "temperature"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
async def test_unsupported_or_bad_parameters_are_400(
    client: openai.AsyncOpenAI, extra: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        await client.completions.create(model="chat", prompt="hi", extra_body=extra)
    assert e.value.status_code == 400
    error = e.value.body
    assert isinstance(error, dict)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]


async def test_unknown_model_is_openai_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        await client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(e.value.body, dict) and "nope" in e.value.body["message"]


async def test_error_shapes(served: tuple[LiveWorker, FakeEngine]) -> None:
    worker, _ = served
    async with httpx.AsyncClient(base_url=worker.url) as http:
        bad_json = await http.post("/v1/chat/completions", content=b"{nope")
        no_route = await http.get("/v2/nothing/here")
        v1_route = await http.get("/v1/nothing")
        wrong_method = await http.get("/v2/repository/index")
        chat_on_v2 = await http.post("/v2/models/chat/infer", json={"inputs": []})
    assert bad_json.status_code == 400
    assert set(bad_json.json()["error"]) == {"message", "type", "param", "code"}
    assert no_route.status_code == 404 and "/v2/nothing/here" in no_route.json()["error"]
    assert v1_route.status_code == 404 and v1_route.json()["error"]["type"] == "not_found_error"
    assert wrong_method.status_code == 405 and isinstance(wrong_method.json()["error"], str)
    assert chat_on_v2.status_code == 400


async def test_oip_generate_and_stream(served: tuple[LiveWorker, FakeEngine]) -> None:
    worker, engine = served
    body = {"text_input": "Hi", "max_tokens": 4, "parameters": {"temperature": 0}}
    async with httpx.AsyncClient(base_url=worker.url) as http:
        whole = await http.post("/v2/models/chat/generate", json=body)
        streamed = await http.post("/v2/models/chat/versions/1/generate_stream", json=body)
        bad = await http.post("/v2/models/chat/generate", json={"text_input": "Hi", "top_p": 2})
        missing = await http.post("/v2/models/nope/generate", json=body)
    assert whole.status_code == 200
    answer = whole.json()
    assert answer["model_name"] == "chat" and answer["model_version"] == "1"
    assert answer["text_output"] == REPLY[:4] and answer["finish_reason"] == "length"
    assert engine.params[0].max_tokens == 4 and engine.params[0].temperature == 0
    events = [orjson.loads(e[6:]) for e in streamed.text.split("\n\n") if e]
    assert [e["text_output"] for e in events] == list(REPLY[:4])
    assert events[-1]["finish_reason"] == "length" and "finish_reason" not in events[0]
    assert bad.status_code == 400 and "top_p" in bad.json()["error"]
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


async def test_stream_arrives_as_it_is_generated(served: tuple[LiveWorker, FakeEngine]) -> None:
    """The first token reaches the client while the engine still holds the rest."""
    worker, engine = served
    engine.hold_after = 2
    body = {"model": "chat", "prompt": "x", "max_tokens": 6, "stream": True}
    async with httpx.AsyncClient(base_url=worker.url, timeout=10) as http:
        async with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)
            assert orjson.loads(first[6:])["choices"][0]["text"] == REPLY[0]
            assert engine.running  # still generating: nothing was buffered to the end
            engine.gate.set()
            rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v2/models/chat/generate_stream"])
async def test_client_going_away_aborts_the_sequence(
    served: tuple[LiveWorker, FakeEngine], path: str
) -> None:
    worker, engine = served
    engine.hold_after = 1
    if path.startswith("/v1"):
        body: dict[str, object] = {
            "model": "chat",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
    else:
        body = {"text_input": "hi", "max_tokens": 10}
    async with httpx.AsyncClient(base_url=worker.url, timeout=10) as http:
        async with http.stream("POST", path, json=body) as response:
            lines = response.aiter_lines()
            await asyncio.wait_for(anext(lines), 10)
            await wait_until_async(lambda: bool(engine.running), timeout=10, what="running")
    # The connection is closed with the sequence held back by the gate.
    await wait_until_async(lambda: bool(engine.aborted), timeout=10, what="sequence aborted")
    assert not engine.running and not engine.finished


async def test_non_streaming_client_going_away_aborts(
    served: tuple[LiveWorker, FakeEngine],
) -> None:
    worker, engine = served
    engine.hold_after = 1
    host, port = worker.url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    body = orjson.dumps({"text_input": "hi", "max_tokens": 10})
    writer.write(
        b"POST /v2/models/chat/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await wait_until_async(lambda: bool(engine.running), timeout=10, what="running")
    writer.close()
    await writer.wait_closed()
    await wait_until_async(lambda: bool(engine.aborted), timeout=10, what="sequence aborted")
    assert not engine.finished


async def test_keep_alive_after_a_stream(served: tuple[LiveWorker, FakeEngine]) -> None:
    worker, _ = served
    body = {"model": "chat", "prompt": "x", "max_tokens": 2, "stream": True}
    async with httpx.AsyncClient(base_url=worker.url, timeout=10) as http:
        first = await http.post("/v1/completions", json=body)
        second = await http.get("/v2/health/ready")
        third = await http.post("/v1/completions", json=body)
    assert first.text.endswith("data: [DONE]\n\n")
    assert second.status_code == 200

    def chunks(text: str) -> list[object]:
        # each answer has its own id, and "created" may fall in the next second
        events = [e[6:] for e in text.split("\n\n") if e.startswith("data: {")]
        return [{k: v for k, v in orjson.loads(e).items() if k not in ("id", "created")}
                for e in events]  # fmt: skip

    assert third.text.endswith("data: [DONE]\n\n")
    assert chunks(third.text) == chunks(first.text) and len(chunks(first.text)) >= 2


async def test_embeddings(tmp_path: Path) -> None:
    table = build_text_model(tmp_path / "text.onnx")
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0)
    dp = DataPlane(settings)
    await dp.load_path("text", "1", tmp_path / "text.onnx")
    async with (
        live_worker(settings, dp) as worker,
        openai.AsyncOpenAI(base_url=worker.url + "/v1", api_key="x", max_retries=0) as client,
    ):
        texts = ["hello world", "fast inference"]
        as_float = await client.embeddings.create(
            model="text", input=texts, encoding_format="float"
        )
        default = await client.embeddings.create(model="text", input=texts)  # base64 on the wire
        with pytest.raises(openai.BadRequestError):
            await client.embeddings.create(model="text", input=texts, dimensions=2)
    for result in (as_float, default):
        assert [d.index for d in result.data] == [0, 1]
        for d, text in zip(result.data, texts, strict=True):
            assert d.embedding == pytest.approx(reference(table, text).tolist(), abs=1e-6)
    assert as_float.usage.prompt_tokens == 4


async def test_config_stats_and_metrics(served: tuple[LiveWorker, FakeEngine]) -> None:
    worker, _ = served
    async with httpx.AsyncClient(base_url=worker.url) as http:
        await http.post("/v2/models/chat/generate", json={"text_input": "Hi", "max_tokens": 3})
        config = (await http.get("/v2/models/chat/config")).json()
        stats = (await http.get("/v2/models/chat/stats")).json()
        every = (await http.get("/v2/models/stats")).json()
        index = (await http.post("/v2/repository/index", json={})).json()
        metrics = (await http.get("/metrics")).text
    assert config["model_transaction_policy"] == {"decoupled": True}
    assert config["input"][0] == {"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]}
    [chat] = stats["model_stats"]
    assert chat["inference_count"] == 1 and chat["inference_stats"]["success"]["count"] == 1
    assert chat["last_inference"] > 0
    assert [s["name"] for s in every["model_stats"]] == ["chat"]
    assert index == [{"name": "chat", "version": "1", "state": "READY", "reason": ""}]
    for series in (
        'meridian_worker_time_to_first_token_seconds_count{model="chat:1"} 1.0',
        'meridian_worker_time_per_output_token_seconds_count{model="chat:1"} 1.0',
        'meridian_worker_generation_seconds_count{model="chat:1"} 1.0',
        'meridian_worker_kv_blocks_total{model="chat:1"} 32.0',
        'meridian_worker_prefix_cache_hit_rate{model="chat:1"} 0.25',
        'meridian_worker_decode_tokens_total{model="chat:1"} 20.0',
        'meridian_worker_generations_total{finish_reason="length",model="chat:1"} 1.0',
    ):
        assert series in metrics, series


async def test_the_deadline_header_reaches_the_engine(
    served: tuple[LiveWorker, FakeEngine],
) -> None:
    import time

    worker, engine = served
    async with httpx.AsyncClient(base_url=worker.url, timeout=30) as http:
        body = {"model": "chat", "prompt": "Say hi", "max_tokens": 3}
        before = time.monotonic()
        r = await http.post("/v1/completions", json=body,
                            headers={"x-meridian-deadline-ms": "5000"})  # fmt: skip
        assert r.status_code == 200
        deadline = engine.deadlines[-1]
        assert deadline is not None and before + 4.0 < deadline <= time.monotonic() + 5.0
        r = await http.post("/v2/models/chat/generate", json={"text_input": "hi"},
                            headers={"x-meridian-deadline-ms": "2000"})  # fmt: skip
        assert r.status_code == 200
        deadline = engine.deadlines[-1]
        assert deadline is not None and deadline <= time.monotonic() + 2.0
        await http.post("/v1/completions", json=body)
        assert engine.deadlines[-1] is None  # none sent: none invented
        bad = await http.post("/v1/completions", json=body,
                              headers={"x-meridian-deadline-ms": "soon"})  # fmt: skip
        assert bad.status_code == 400 and "x-meridian-deadline-ms" in bad.text
