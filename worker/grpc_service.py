"""gRPC transport: ``inference.GRPCInferenceService`` over ``grpc.aio``.

The servicer only converts (see :mod:`worker.grpc_codec`) and calls the data
plane. :func:`_guard` is the one place errors become status codes: domain errors
through :func:`meridian.errors.grpc_code_for` (with a ``retry-after`` trailer
where given), anything else INTERNAL with a fixed message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from meridian.errors import MeridianError, NotFound, grpc_code_for
from proto import grpc_service_pb2 as pb
from proto import grpc_service_pb2_grpc as pb_grpc
from worker.dataplane import DataPlane
from worker.grpc_codec import (
    decode_infer,
    encode_infer,
    encode_model_metadata,
    repository_parameters,
)
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
        response = await self._dp.infer(decode_infer(request, context.time_remaining()))
        return encode_infer(response)

    @_guard
    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        params = LoadRequest.parse(repository_parameters(request.parameters))
        await self._dp.load(request.model_name, params)
        return pb.RepositoryModelLoadResponse()

    @_guard
    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        version = repository_parameters(request.parameters).get("version")
        await self._dp.unload(request.model_name, str(version) if version else None)
        return pb.RepositoryModelUnloadResponse()


class GrpcServer:
    """A ``grpc.aio`` server on the running event loop."""

    def __init__(self, dataplane: DataPlane, host: str, port: int) -> None:
        limit = dataplane.settings.max_request_bytes
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane), self._server
        )
        self.port = self._server.add_insecure_port(f"{host}:{port}")

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, *, grace_s: float) -> None:
        await self._server.stop(grace_s)
