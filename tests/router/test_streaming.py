"""Generative traffic through the router: real workers serving the tiny model, a real router."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest

from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.generative import (
    WorkerProcess,
    generative_snapshot,
    start_worker,
    tiny_model,
    workers,
)

__all__ = ["tiny_model", "workers"]  # module-scoped fixtures used here

EDGE = "x-meridian-client-location"
NEAR = {EDGE: "11,11"}


async def _router(tmp_path: Path, workers: dict[str, WorkerProcess]) -> RouterServer:
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "snap.json")
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(
        generative_snapshot(
            {"near": (workers["near"], 10.0, 10.0), "far": (workers["far"], 40.0, 40.0)}
        )
    )
    await server.start()
    return server


@pytest.fixture
async def router(tmp_path: Path, workers: dict[str, WorkerProcess]) -> AsyncIterator[RouterServer]:
    server = await _router(tmp_path, workers)
    try:
        yield server
    finally:
        await server.stop()


def _client(base: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", default_headers=NEAR)


GREEDY = {"temperature": 0, "max_tokens": 24, "ignore_eos": True}


async def test_openai_client_through_the_router(router: RouterServer, workers) -> None:
    via = _client(f"http://127.0.0.1:{router.port}")
    direct = _client(workers["near"].endpoint)
    extra = {"extra_body": {"ignore_eos": True}}
    want = await direct.completions.create(
        model="tiny", prompt="The quick brown", temperature=0, max_tokens=24, **extra
    )
    got = await via.completions.create(
        model="tiny", prompt="The quick brown", temperature=0, max_tokens=24, **extra
    )
    assert got.choices[0].text == want.choices[0].text
    assert got.usage is not None and got.usage.completion_tokens == 24

    stream = await via.completions.create(
        model="tiny", prompt="The quick brown", temperature=0, max_tokens=24, stream=True,
        stream_options={"include_usage": True}, **extra,
    )  # fmt: skip
    pieces, usage = [], None
    async for chunk in stream:
        assert "meridian" not in (chunk.model_extra or {})  # the extension is stripped
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == want.choices[0].text
    assert usage is not None and usage.completion_tokens == 24 and usage.prompt_tokens > 0

    messages = [{"role": "user", "content": "Open the file"}]
    chat_want = await direct.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=16, **extra
    )
    chat = await via.chat.completions.create(
        model="tiny", messages=messages, temperature=0, max_tokens=16, stream=True,
        stream_options={"include_usage": True}, **extra,
    )  # fmt: skip
    text, usage = "", None
    async for chunk in chat:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == chat_want.choices[0].message.content
    assert usage is not None and usage.completion_tokens == 16
    assert router.core.counters["streamed"] == 2
    await via.close()
    await direct.close()


async def test_models_are_the_fleets_union_and_bad_bodies_are_400(router: RouterServer) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}") as c:
        models = (await c.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["tiny"]
        r = await c.post("/v1/completions", content=b"{not json")
        assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
        r = await c.post("/v1/completions", json={"prompt": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        r = await c.post("/v1/completions", json={"model": "nope", "prompt": "x"})
        assert r.status_code == 404


async def test_generate_stream_passes_through(router: RouterServer, workers) -> None:
    body = {"text_input": "The quick", "parameters": {"max_tokens": 8, "temperature": 0}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", headers=NEAR) as c:
        async with c.stream("POST", "/v2/models/tiny/generate_stream", json=body) as r:
            assert r.status_code == 200
            events = [line async for line in r.aiter_lines() if line.startswith("data:")]
        direct = await c.post(workers["near"].endpoint + "/v2/models/tiny/generate", json=body)
    text = "".join(orjson.loads(e[5:])["text_output"] for e in events)
    assert text == direct.json()["text_output"]


async def _wait_for(check, what: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_client_that_disconnects_cancels_the_generation(router: RouterServer, workers):
    near = workers["near"]
    before = near.metric("meridian_worker_generations_total", finish_reason="abort")
    body = {"model": "tiny", "prompt": "The", "max_tokens": 480, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{router.port}", headers=NEAR) as c:
        async with c.stream("POST", "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    break  # one chunk, then the client goes away
    await _wait_for(
        lambda: near.metric("meridian_worker_generations_total", finish_reason="abort") > before,
        "the worker to abort the generation",
    )


async def test_stream_continues_on_another_worker_when_its_worker_dies(
    tmp_path: Path, tiny_model: Path
) -> None:
    pair = {n: start_worker(n, tiny_model, tmp_path) for n in ("near", "far")}
    server = await _router(tmp_path, pair)
    prompt, n = "The quick brown", 400
    try:
        async with httpx.AsyncClient(timeout=60) as c:
            whole = await c.post(
                pair["far"].endpoint + "/v1/completions",
                json={"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0,
                      "ignore_eos": True},
            )  # fmt: skip
            want = whole.json()["choices"][0]["text"]
            body = {"model": "tiny", "prompt": prompt, "max_tokens": n, "temperature": 0,
                    "ignore_eos": True, "stream": True,
                    "stream_options": {"include_usage": True}}  # fmt: skip
            url = f"http://127.0.0.1:{server.port}/v1/completions"
            events: list[dict[str, object]] = []
            async with c.stream("POST", url, json=body, headers=NEAR) as r:
                assert r.headers["x-meridian-region"] == "near"
                async for line in r.aiter_lines():
                    if not line.startswith("data:") or line == "data: [DONE]":
                        continue
                    events.append(orjson.loads(line[5:]))
                    if len(events) == 5:
                        pair["near"].kill()  # mid-stream, after some tokens were sent
        assert server.core.counters["stream_continued"] == 1
        assert not [e for e in events if "error" in e]
        assert len({e["id"] for e in events}) == 1  # one stream as far as the client knows
        text = "".join(
            c["text"]  # type: ignore[index]
            for e in events
            for c in e["choices"]  # type: ignore[attr-defined]
        )
        assert text == want  # token for token: nothing lost, nothing repeated
        usages = [e["usage"] for e in events if e.get("usage")]
        assert len(usages) == 1
        assert usages[0]["completion_tokens"] == n  # type: ignore[index]
        assert usages[0]["prompt_tokens"] == whole.json()["usage"]["prompt_tokens"]  # type: ignore[index]
        finishes = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]  # type: ignore[attr-defined]
        assert finishes == ["length"]
    finally:
        await server.stop()
        for w in pair.values():
            w.stop()
