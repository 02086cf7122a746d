"""The OIP generate extension (as Triton serves it) for generative models.

``POST /v2/models/{name}[/versions/{version}]/generate`` takes
``{"text_input": "...", "parameters": {"max_tokens": 32, ...}}`` and answers
``{"model_name", "model_version", "text_output", ...}``; ``.../generate_stream``
answers the same fields as server-sent events, one ``data: {...}`` per step, the
last with ``finish_reason``. Keys beside ``text_input`` at the top level count
as parameters too (as Triton reads them); ``parameters`` wins. Errors are the
protocol's ``{"error": "..."}``; one that happens mid-stream is sent as an event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine
from contextlib import aclosing, suppress
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from meridian.errors import InvalidInput, MeridianError
from worker.dataplane import DataPlane
from worker.generation.types import TokenEvent
from worker.generative import TEXT_INPUT, TEXT_OUTPUT, GenerativeModel, sampling_params
from worker.rest_infer import request_deadline

__all__ = ["build_generate_router", "unless_disconnected"]

MAX_BODY = 16 * 1024 * 1024
_JSON = "application/json"


def _dataplane(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]


async def unless_disconnected(request: Request, work: Coroutine[Any, Any, Response]) -> Response:
    """``work``'s answer, or, when the client disconnects first, ``work`` cancelled
    (which closes its token stream, so the engine aborts the sequence). The
    worker's own server cancels the route itself; under another ASGI server this
    watches for the disconnect."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        return Response(status_code=499)  # nobody is there to read it
    finally:
        watcher.cancel()
        task.cancel()


def _parse(body: bytes) -> tuple[str, dict[str, Any], str]:
    """The prompt, the parameters and the request id of a generate request."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidInput("generate request is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidInput("generate request must be a JSON object")
    text = data.get(TEXT_INPUT)
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str):
        raise InvalidInput(f"generate request needs '{TEXT_INPUT}' (a string)")
    params = data.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("'parameters' must be an object")
    merged = {k: v for k, v in data.items() if k not in (TEXT_INPUT, "parameters", "id")}
    merged.update(params)
    request_id = data.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    return text, merged, request_id


def _fields(model: GenerativeModel, request_id: str, text: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        TEXT_OUTPUT: text,
    }
    if request_id:
        body["id"] = request_id
    return body


def _finish(event: TokenEvent) -> dict[str, Any]:
    return {
        "finish_reason": event.finish_reason,
        "prompt_tokens": event.prompt_tokens,
        "completion_tokens": event.completion_tokens,
        "cached_tokens": event.cached_tokens,
    }


async def _stream(
    model: GenerativeModel, request_id: str, events: AsyncGenerator[TokenEvent, None]
) -> AsyncIterator[bytes]:
    async with aclosing(events) as stream:
        try:
            async for event in stream:
                if event.finish_reason is None and not event.text:
                    continue
                body = _fields(model, request_id, event.text)
                if event.finish_reason is not None:
                    body |= _finish(event)
                yield b"data: " + orjson.dumps(body) + b"\n\n"
        except MeridianError as exc:
            yield b"data: " + orjson.dumps({"error": exc.message}) + b"\n\n"


def build_generate_router() -> APIRouter:
    router = APIRouter()

    async def start(
        request: Request, dp: DataPlane, name: str, version: str | None
    ) -> tuple[GenerativeModel, str, AsyncGenerator[TokenEvent, None]]:
        from worker.rest import read_body

        text, params, request_id = _parse(await read_body(request, MAX_BODY))
        model = dp.generative_model(name, version)
        sampling = sampling_params(params)
        ids = model.engine.encode(text)
        deadline = request_deadline(request.headers.raw)
        events = dp.generate(model, ids, sampling, request_id or uuid.uuid4().hex, deadline)
        return model, request_id, events

    @router.post("/v2/models/{name}/generate")
    @router.post("/v2/models/{name}/versions/{version}/generate")
    async def generate(
        request: Request, dp: DataPlaneDep, name: str, version: str | None = None
    ) -> Response:
        model, request_id, events = await start(request, dp, name, version)

        async def collect() -> Response:
            parts: list[str] = []
            last: TokenEvent | None = None
            async with aclosing(events) as stream:
                async for event in stream:
                    parts.append(event.text)
                    last = event
            if last is None or last.finish_reason == "abort":
                raise MeridianError("the generation was aborted")
            body = _fields(model, request_id, "".join(parts)) | _finish(last)
            return Response(orjson.dumps(body), media_type=_JSON)

        return await unless_disconnected(request, collect())

    @router.post("/v2/models/{name}/generate_stream")
    @router.post("/v2/models/{name}/versions/{version}/generate_stream")
    async def generate_stream(
        request: Request, dp: DataPlaneDep, name: str, version: str | None = None
    ) -> Response:
        model, request_id, events = await start(request, dp, name, version)
        return StreamingResponse(
            _stream(model, request_id, events),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return router
