"""OpenAI-compatible routes: completions, chat completions, models, embeddings.

The official ``openai`` client works against the worker unchanged. Requests are
validated by the models below; what the worker does not do (``n`` above 1,
``logprobs``, ``echo``, tools) is refused with a 400 that names the parameter,
never silently ignored. Errors have OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}`` (see :func:`openai_error`).

``stream: true`` answers with server-sent events, one ``data: {...}`` per
generation step, ending ``data: [DONE]``; with
``stream_options.include_usage`` a last chunk carries the token counts. A client
that goes away closes the stream, which aborts the sequence in the engine.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meridian.errors import InvalidInput, MeridianError, NotFound
from worker.dataplane import DataPlane
from worker.generate_api import unless_disconnected
from worker.generation.types import SamplingParams, TokenEvent
from worker.generative import GenerativeModel, stop_strings
from worker.rest_infer import request_deadline
from worker.tensors import InferenceRequest, InputTensor

__all__ = ["build_openai_router", "openai_error"]

MAX_BODY = 16 * 1024 * 1024
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_DONE = b"data: [DONE]\n\n"
# asked for by the router: each streamed chunk then carries the ids of its tokens in
# "meridian": {"token_ids": [...]}, the first one also the prompt's ids and max_tokens,
# so that a stream broken off here can be continued on another worker
TOKEN_IDS_HEADER = "x-meridian-token-ids"


class ParamError(InvalidInput):
    """Bad input in one request parameter (OpenAI's errors name it)."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.openai_code = code


def openai_error(exc: MeridianError) -> Response:
    """A domain error in OpenAI's error shape."""
    if exc.status == 404:
        kind = "not_found_error"
    elif exc.status == 429:
        kind = "rate_limit_error"
    elif exc.status < 500:
        kind = "invalid_request_error"
    else:
        kind = "server_error"
    body = {
        "error": {
            "message": exc.message,
            "type": kind,
            "param": getattr(exc, "param", None),
            "code": getattr(exc, "openai_code", None) or exc.code,
        }
    }
    headers = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after)))
    return Response(orjson.dumps(body), exc.status, headers=headers, media_type="application/json")


# -- requests --------------------------------------------------------------------------


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Sampling(BaseModel):
    """What completions and chat completions share. Unknown fields are ignored, as
    OpenAI's own API does."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    def check(self) -> None:
        if self.n != 1:
            raise ParamError("only n=1 is supported", "n")
        if self.presence_penalty or self.frequency_penalty:
            which = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            raise ParamError(f"'{which}' is not supported", which)
        if self.logit_bias:
            raise ParamError("'logit_bias' is not supported", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise ParamError("'stream_options' is only allowed with stream=true", "stream_options")

    def sampling(self, max_tokens: int) -> SamplingParams:
        stop: tuple[str, ...] = ()
        if self.stop is not None and self.stop != []:
            try:
                stop = stop_strings(self.stop, "stop")
            except InvalidInput as exc:
                raise ParamError(exc.message, "stop") from None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=max(0, self.top_k or 0),
            seed=self.seed,
            stop=stop,
            ignore_eos=self.ignore_eos,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def check(self) -> None:
        super().check()
        if self.logprobs is not None:
            raise ParamError("'logprobs' is not supported", "logprobs")
        if self.echo:
            raise ParamError("'echo' is not supported", "echo")
        if self.suffix:
            raise ParamError("'suffix' is not supported", "suffix")
        if self.best_of not in (None, 1):
            raise ParamError("only best_of=1 is supported", "best_of")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def as_dict(self) -> dict[str, str]:
        if isinstance(self.content, list):
            text = "".join(p.text for p in self.content)
        else:
            text = self.content or ""
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def check(self) -> None:
        super().check()
        if self.logprobs or self.top_logprobs is not None:
            raise ParamError("'logprobs' is not supported", "logprobs")
        if self.tools:
            raise ParamError("'tools' are not supported", "tools")
        if self.response_format and self.response_format.get("type") != "text":
            raise ParamError("only response_format type 'text' is supported", "response_format")


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


T = TypeVar("T", bound=BaseModel)


def _parse(cls: type[T], body: bytes) -> T:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ParamError("the request body is not valid JSON", None) from None
    if not isinstance(data, dict):
        raise ParamError("the request body must be a JSON object", None)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = str(first["loc"][0]) if first["loc"] else None
        raise ParamError(f"'{param or 'body'}': {first['msg']}", param) from None


# -- responses -------------------------------------------------------------------------


def _usage(event: TokenEvent | None) -> dict[str, object]:
    prompt = event.prompt_tokens if event else 0
    completion = event.completion_tokens if event else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": event.cached_tokens if event else 0},
    }


def _finish(event: TokenEvent) -> str:
    if event.finish_reason == "abort":
        raise MeridianError("the generation was aborted")
    return event.finish_reason or "length"


class _Call:
    """One completion or chat completion: its ids, model and how chunks look."""

    def __init__(self, chat: bool, model: GenerativeModel, include_usage: bool) -> None:
        # set when the router asked for token ids: the first chunk's extension
        self.ids_first: dict[str, Any] | None = None
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model.name
        self.include_usage = include_usage

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def chunk(
        self,
        text: str | None,
        finish: str | None,
        first: bool = False,
        ids: list[int] | None = None,
    ) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            body = self._envelope("chat.completion.chunk", [choice])
        else:
            choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            body = self._envelope("text_completion", [choice])
        if self.include_usage:
            body["usage"] = None
        if ids is not None:
            ext: dict[str, Any] = {"token_ids": ids}
            if self.ids_first is not None:
                ext |= self.ids_first
                self.ids_first = None
            body["meridian"] = ext
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def usage_chunk(self, last: TokenEvent | None) -> bytes:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        body = self._envelope(obj, []) | {"usage": _usage(last)}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def whole(self, text: str, last: TokenEvent) -> dict[str, Any]:
        finish = _finish(last)
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish,
            }
            body = self._envelope("chat.completion", [choice])
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            body = self._envelope("text_completion", [choice])
        return body | {"usage": _usage(last)}


async def _sse(call: _Call, events: AsyncGenerator[TokenEvent, None]) -> AsyncIterator[bytes]:
    last: TokenEvent | None = None
    with_ids = call.ids_first is not None
    ids: list[int] = []  # ids of tokens whose text is not sent yet
    async with aclosing(events) as stream:
        if call.chat:
            yield call.chunk("", None, first=True, ids=[] if with_ids else None)
        try:
            async for event in stream:
                last = event
                if event.token_id is not None:
                    ids.append(event.token_id)
                if event.finish_reason is not None:
                    yield call.chunk(event.text, _finish(event), ids=ids if with_ids else None)
                elif event.text:
                    yield call.chunk(event.text, None, ids=ids if with_ids else None)
                    ids = []
        except MeridianError as exc:
            kind = "invalid_request_error" if exc.status < 500 else "server_error"
            error = {"message": exc.message, "type": kind, "param": None, "code": exc.code}
            yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
            return
    if call.include_usage:
        yield call.usage_chunk(last)
    yield _DONE


async def _collect(events: AsyncGenerator[TokenEvent, None]) -> tuple[str, TokenEvent]:
    parts: list[str] = []
    last: TokenEvent | None = None
    async with aclosing(events) as stream:
        async for event in stream:
            parts.append(event.text)
            last = event
    if last is None:
        raise MeridianError("the engine ended the sequence without a token")
    return "".join(parts), last


# -- routes ----------------------------------------------------------------------------


def _dataplane(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]


def _model_ref(model: str) -> tuple[str, str | None]:
    name, _, version = model.partition(":")
    return name, version or None


def _generative(dp: DataPlane, model: str) -> GenerativeModel:
    name, version = _model_ref(model)
    try:
        return dp.generative_model(name, version)
    except NotFound:
        raise NotFound(f"the model '{model}' does not exist") from None
    except InvalidInput as exc:
        raise ParamError(exc.message, "model") from None


async def _body(request: Request) -> bytes:
    from worker.rest import read_body

    return await read_body(request, MAX_BODY)


def build_openai_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/completions")
    async def completions(request: Request, dp: DataPlaneDep) -> Response:
        req = _parse(CompletionRequest, await _body(request))
        req.check()
        model = _generative(dp, req.model)
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise ParamError("one prompt per request is supported", "prompt")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = model.engine.encode(prompt)
        else:
            ids = [int(t) for t in prompt]  # type: ignore[arg-type]
        max_tokens = 16 if req.max_tokens is None else req.max_tokens
        return await _start(request, dp, model, ids, req, max_tokens, chat=False)

    @router.post("/v1/chat/completions")
    async def chat_completions(request: Request, dp: DataPlaneDep) -> Response:
        req = _parse(ChatRequest, await _body(request))
        req.check()
        model = _generative(dp, req.model)
        ids = model.engine.chat_prompt([m.as_dict() for m in req.messages])
        wanted = req.max_completion_tokens or req.max_tokens
        max_tokens = wanted or max(1, model.engine.max_model_len - len(ids))
        return await _start(request, dp, model, ids, req, max_tokens, chat=True)

    @router.get("/v1/models")
    async def list_models(dp: DataPlaneDep) -> Response:
        names = sorted({m.name for m in dp.repository.all()})
        data = [_model_card(n) for n in names]
        body = {"object": "list", "data": data}
        return Response(orjson.dumps(body), media_type="application/json")

    @router.get("/v1/models/{model}")
    async def get_model(dp: DataPlaneDep, model: str) -> Response:
        name, version = _model_ref(model)
        try:
            dp.repository.find(name, version)
        except NotFound:
            raise NotFound(f"the model '{model}' does not exist") from None
        return Response(orjson.dumps(_model_card(model)), media_type="application/json")

    @router.post("/v1/embeddings")
    async def embeddings(request: Request, dp: DataPlaneDep) -> Response:
        req = _parse(EmbeddingRequest, await _body(request))
        return await _embed(dp, req)

    return router


def _model_card(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "meridian"}


async def _start(
    request: Request,
    dp: DataPlane,
    model: GenerativeModel,
    ids: list[int],
    req: _Sampling,
    max_tokens: int,
    *,
    chat: bool,
) -> Response:
    try:
        deadline = request_deadline(request.headers.raw)
        events = dp.generate(model, ids, req.sampling(max_tokens), uuid.uuid4().hex, deadline)
    except ParamError:
        raise
    except InvalidInput as exc:
        param = "messages" if chat else "prompt"
        if "max_tokens" in exc.message:
            param = "max_tokens"
        raise ParamError(exc.message, param, "context_length_exceeded") from None
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    call = _Call(chat, model, include_usage)
    if request.headers.get(TOKEN_IDS_HEADER) == "1":
        call.ids_first = {"prompt_token_ids": ids, "max_tokens": max_tokens}
    if req.stream:
        return StreamingResponse(
            _sse(call, events), media_type="text/event-stream", headers=SSE_HEADERS
        )

    async def whole() -> Response:
        text, last = await _collect(events)
        return Response(orjson.dumps(call.whole(text, last)), media_type="application/json")

    return await unless_disconnected(request, whole())


async def _embed(dp: DataPlane, req: EmbeddingRequest) -> Response:
    if req.dimensions is not None:
        raise ParamError("'dimensions' is not supported", "dimensions")
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise ParamError("'input' must not be empty", "input")
    if any(not t for t in texts):
        raise ParamError("'input' must not contain empty strings", "input")
    name, version = _model_ref(req.model)
    try:
        model = dp.repository.get(name, version)
    except NotFound:
        raise NotFound(f"the model '{req.model}' does not exist") from None
    except InvalidInput as exc:
        raise ParamError(exc.message, "model") from None
    text_inputs = [s for s in model.engine.inputs if s.datatype == "BYTES"]
    if len(model.engine.inputs) != 1 or not text_inputs:
        raise ParamError(f"model '{req.model}' does not embed text", "model")
    array = np.empty(len(texts), dtype=object)
    array[:] = [t.encode("utf-8") for t in texts]
    request = InferenceRequest(name, version, [InputTensor(text_inputs[0].name, "BYTES", array)])
    response = await dp.infer(request)
    outputs = response.outputs
    vectors = outputs["embedding"] if "embedding" in outputs else next(iter(outputs.values()))
    vectors = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
    data = []
    for i, row in enumerate(vectors):
        value: object = (
            base64.b64encode(row.astype("<f4").tobytes()).decode()
            if req.encoding_format == "base64"
            else row.tolist()
        )
        data.append({"object": "embedding", "index": i, "embedding": value})
    count = getattr(model.engine, "count_tokens", None)
    tokens = int(count(texts)) if callable(count) else 0
    body = {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
    return Response(orjson.dumps(body), media_type="application/json")
