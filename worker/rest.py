"""REST transport (OIP v2 over HTTP): parse, call the data plane, encode.

Errors are answered in one place (:func:`install_error_handlers`): a domain
error becomes its HTTP status with ``{"error": message}`` (the protocol's error
shape, which tritonclient reads), plus ``Retry-After`` where the error gives one;
unknown paths and methods answer 404 and 405 in the same shape; anything else is
a bug and answers 500 with a fixed message. Under ``/v1/`` (the OpenAI routes,
:mod:`worker.openai_api`) errors take OpenAI's shape instead.
"""

from __future__ import annotations

import logging
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from meridian.errors import InvalidInput, MeridianError, NotFound, PayloadTooLarge
from worker.access import check_management_token
from worker.dataplane import DataPlane
from worker.repository import LoadRequest
from worker.rest_codec import error_body
from worker.rest_infer import INFER_PATH, Receive, Scope, Send, handle_infer

__all__ = ["WorkerApp", "install_error_handlers", "install_routes"]

log = logging.getLogger(__name__)

JSON = "application/json"


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=JSON)


def error_response(exc: MeridianError) -> Response:
    status, body, headers = error_body(exc)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers})


class MethodNotAllowed(MeridianError):
    status = 405
    code = "method_not_allowed"


def _answer_error(request: Request, exc: MeridianError) -> Response:
    if request.url.path.startswith("/v1/"):
        from worker.openai_api import openai_error

        return openai_error(exc)
    return error_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    async def domain(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MeridianError)
        return _answer_error(request, exc)

    async def http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        error: MeridianError
        if exc.status_code == 404:
            error = NotFound(f"no route for {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = MeridianError(str(exc.detail))
            error.status = exc.status_code
        response = _answer_error(request, error)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"]) or "request"
        return _answer_error(request, InvalidInput(f"{where}: {first['msg']}"))

    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("unexpected error", exc_info=exc)
        return _answer_error(request, MeridianError("internal server error"))

    app.add_exception_handler(MeridianError, domain)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(Exception, unexpected)


def get_dataplane(request: Request) -> DataPlane:
    dp: DataPlane = request.app.state.dataplane
    return dp


DataPlaneDep = Annotated[DataPlane, Depends(get_dataplane)]


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) past ``limit`` bytes before reading more."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {limit} byte limit")
    if request.headers.get("content-encoding", "identity") != "identity":
        raise InvalidInput("compressed request bodies (Content-Encoding) are not supported")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def build_router() -> APIRouter:
    """Every REST route except inference (see :class:`WorkerApp`)."""
    router = APIRouter()

    @router.get("/v2/health/live")
    async def health_live(dp: DataPlaneDep) -> Response:
        return json_response({"live": dp.live()})

    @router.get("/v2/health/ready")
    async def health_ready(dp: DataPlaneDep) -> Response:
        ready = dp.ready()
        return json_response({"ready": ready}, 200 if ready else 503)

    @router.get("/v2")
    async def server_metadata(dp: DataPlaneDep) -> Response:
        return json_response(dp.server_metadata())

    @router.get("/v2/models/stats")
    async def all_statistics(dp: DataPlaneDep) -> Response:
        return json_response({"model_stats": dp.model_statistics(None, None)})

    @router.get("/v2/models/{name}/stats")
    @router.get("/v2/models/{name}/versions/{version}/stats")
    async def model_statistics(dp: DataPlaneDep, name: str, version: str | None = None) -> Response:
        return json_response({"model_stats": dp.model_statistics(name, version)})

    @router.get("/v2/models/{name}/config")
    @router.get("/v2/models/{name}/versions/{version}/config")
    async def model_config(dp: DataPlaneDep, name: str, version: str | None = None) -> Response:
        return json_response(dp.model_config(name, version))

    @router.get("/v2/models/{name}")
    @router.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(dp: DataPlaneDep, name: str, version: str | None = None) -> Response:
        return json_response(dp.model_metadata(name, version))

    @router.get("/v2/models/{name}/ready")
    @router.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(dp: DataPlaneDep, name: str, version: str | None = None) -> Response:
        ready = dp.model_ready(name, version)
        return json_response({"name": name, "ready": ready}, 200 if ready else 503)

    @router.post("/v2/repository/index")
    async def repository_index(request: Request, dp: DataPlaneDep) -> Response:
        body = await read_body(request, 1 << 16)
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise InvalidInput("repository index request is not valid JSON") from None
        ready_only = isinstance(data, dict) and data.get("ready") is True
        models = dp.repository_index()
        if ready_only:
            models = [m for m in models if m["state"] == "READY"]
        return json_response(models)

    @router.post("/v2/repository/models/{name}/load")
    async def repository_load(request: Request, dp: DataPlaneDep, name: str) -> Response:
        check_management_token(dp.settings.management_secret, request.headers.items())
        body = await read_body(request, 1 << 20)
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise InvalidInput("load request is not valid JSON") from None
        model = await dp.load(name, LoadRequest.parse(data))
        return json_response(
            {
                "name": model.name,
                "version": model.version,
                "variant": model.variant,
                "sha256": model.sha256,
                "device": model.device,
            }
        )

    @router.post("/v2/repository/models/{name}/unload")
    async def repository_unload(request: Request, dp: DataPlaneDep, name: str) -> Response:
        check_management_token(dp.settings.management_secret, request.headers.items())
        body = await read_body(request, 1 << 16)
        try:
            data = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            raise InvalidInput("unload request is not valid JSON") from None
        params = data.get("parameters", data) if isinstance(data, dict) else {}
        version = params.get("version") if isinstance(params, dict) else None
        if version is not None and not isinstance(version, str):
            raise InvalidInput("unload parameter 'version' must be a string")
        await dp.unload(name, version)
        return json_response({"name": name, "version": version, "unloaded": True})

    @router.get("/v2/stats")
    async def stats(dp: DataPlaneDep) -> Response:
        return json_response(dp.stats())

    @router.get("/metrics")
    async def metrics(dp: DataPlaneDep) -> Response:
        return Response(generate_latest(dp.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


class WorkerApp(FastAPI):
    """The REST app; inference requests go straight to :func:`handle_infer`."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.match(scope["path"])
            if match is not None:
                state = self.state
                await handle_infer(
                    state.dataplane, state.infer_decoder, match, scope, receive, send
                )
                return
        await super().__call__(scope, receive, send)


def install_routes(app: FastAPI) -> None:
    from worker.generate_api import build_generate_router
    from worker.openai_api import build_openai_router

    app.include_router(build_router())
    app.include_router(build_generate_router())
    app.include_router(build_openai_router())
    install_error_handlers(app)
