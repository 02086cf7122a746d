"""gRPC transport: ``inference.GRPCInferenceService`` over ``grpc.aio``.

The servicer only converts (see :mod:`worker.grpc_codec` and
:mod:`worker.grpc_generate`) and calls the data plane. :func:`_guard` is the one
place errors become status codes: domain errors through
:func:`meridian.errors.grpc_code_for` (with a ``retry-after`` trailer where given),
anything else INTERNAL with a fixed message.

``ModelStreamInfer`` answers the requests of one stream concurrently. A request
that fails is answered by a response with ``error_message`` and the stream goes
on (as Triton does); a client that cancels the call closes every sequence it
started, which aborts them in the engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from meridian.errors import MeridianError, NotFound, grpc_code_for
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from worker.access import bind_worker_port, check_management_token, router_only_interceptor
from worker.dataplane import DataPlane
from worker.generation.types import TokenEvent
from worker.generative import GenerativeModel, sampling_params
from worker.grpc_codec import (
    decode_infer,
    encode_infer,
    encode_model_metadata,
    repository_parameters,
)
from worker.grpc_generate import decode_generate, encode_error, encode_step
from worker.repository import LoadRequest

__all__ = ["GrpcServer", "InferenceServicer"]

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def _guard(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        try:
            return await method(self, request, context)
        except MeridianError as exc:
            trailer: tuple[tuple[str, str], ...] = ()
            if exc.retry_after is not None:
                trailer = (("retry-after", str(max(1, math.ceil(exc.retry_after)))),)
            await context.abort(grpc_code_for(exc), exc.message, trailing_metadata=trailer)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")
        raise AssertionError("unreachable")  # abort always raises

    return wrapper


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self._dp = dataplane

    @_guard
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self._dp.live())

    @_guard
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._dp.ready())

    @_guard
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        try:
            ready = self._dp.model_ready(request.name, request.version or None)
        except NotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_guard
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        meta = self._dp.server_metadata()
        return pb.ServerMetadataResponse(
            name=str(meta["name"]),
            version=str(meta["version"]),
            extensions=list(meta["extensions"]),  # type: ignore[call-overload]
        )

    @_guard
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        return encode_model_metadata(self._dp.model_metadata(request.name, request.version or None))

    @_guard
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        model = self._dp.repository.find(request.model_name, request.model_version or None)
        if isinstance(model, GenerativeModel):  # the whole text in one response
            responses = [
                r
                async for r in self._generate(
                    request, force_whole=True, timeout_s=context.time_remaining()
                )
            ]
            if not responses:
                raise MeridianError("the engine ended the sequence without a token")
            return responses[-1].infer_response
        response = await self._dp.infer(decode_infer(request, context.time_remaining()))
        return encode_infer(response)

    async def ModelStreamInfer(
        self,
        request_iterator: AsyncIterator[pb.ModelInferRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        out: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue(maxsize=256)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request: pb.ModelInferRequest) -> None:
            try:
                async for response in self._stream_one(request):
                    await out.put(response)
            except MeridianError as exc:
                await out.put(encode_error(request, exc.message))
            except Exception:
                log.exception("unexpected error in ModelStreamInfer")
                await out.put(encode_error(request, "internal server error"))

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.create_task(answer(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:
                await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await out.get()) is not None:
                yield item
            await reader
        finally:
            pending = [reader, *tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _stream_one(
        self, request: pb.ModelInferRequest
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        model = self._dp.repository.find(request.model_name, request.model_version or None)
        if isinstance(model, GenerativeModel):
            async for response in self._generate(request):
                yield response
            return
        answer = await self._dp.infer(decode_infer(request, None))
        yield pb.ModelStreamInferResponse(infer_response=encode_infer(answer))

    async def _generate(
        self,
        request: pb.ModelInferRequest,
        *,
        force_whole: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """A generation's responses; with ``timeout_s`` (the call's gRPC deadline) one
        still queued when it runs out is dropped before its prefill."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        call = decode_generate(request)
        model = self._dp.generative_model(request.model_name, request.model_version or None)
        params = sampling_params(call.parameters)
        ids = model.engine.encode(call.text)
        events = self._dp.generate(model, ids, params, request.id or uuid.uuid4().hex, deadline)
        name, version, rid = model.name, model.version, request.id
        parts: list[str] = []
        async with aclosing(events) as stream:
            async for event in stream:
                final: TokenEvent | None = event if event.finish_reason is not None else None
                if final is not None and final.finish_reason == "abort":
                    raise MeridianError("the generation was aborted")
                if not call.stream or force_whole:
                    parts.append(event.text)
                    if final is not None:
                        yield encode_step(name, version, rid, "".join(parts), final)
                elif final is None:
                    if event.text:
                        yield encode_step(name, version, rid, event.text, None)
                elif call.empty_final:
                    if event.text:
                        yield encode_step(name, version, rid, event.text, None)
                    yield encode_step(name, version, rid, None, final)
                else:
                    yield encode_step(name, version, rid, event.text, final)

    @_guard
    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        config = self._dp.model_config(request.name, request.version or None)
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

    @_guard
    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        stats = self._dp.model_statistics(request.name or None, request.version or None)
        return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

    @_guard
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        models = self._dp.repository_index()
        if request.ready:
            models = [m for m in models if m["state"] == "READY"]
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse())

    @_guard
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        check_management_token(self._dp.settings.management_secret, _metadata(context))
        params = LoadRequest.parse(repository_parameters(request.parameters))
        await self._dp.load(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    @_guard
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        check_management_token(self._dp.settings.management_secret, _metadata(context))
        version = repository_parameters(request.parameters).get("version")
        await self._dp.unload(request.model_name, str(version) if version else None)
        return pb.RepositoryModelUnloadResponse()


def _metadata(context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in context.invocation_metadata() or ()]


class GrpcServer:
    """A ``grpc.aio`` server on the running event loop."""

    def __init__(self, dataplane: DataPlane, host: str, port: int) -> None:
        settings = dataplane.settings
        limit = settings.max_request_bytes
        self._server = grpc.aio.server(
            # TLS: only the fleet's router may call (worker.access)
            interceptors=[router_only_interceptor()] if settings.tls else None,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane), self._server
        )
        self.port = bind_worker_port(self._server, f"{host}:{port}", settings)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, *, grace_s: float) -> None:
        await self._server.stop(grace_s)
