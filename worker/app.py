"""The worker process: ``create_app`` builds the REST app whose lifespan also runs
the gRPC server, so both transports share one event loop and one data plane;
:func:`running` serves it on the worker's own HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from worker.dataplane import SERVER_VERSION, DataPlane
from worker.repository import LoadRequest
from worker.rest import WorkerApp, install_routes
from worker.rest_codec import InferDecoder
from worker.settings import WorkerSettings

__all__ = ["ModelSpec", "create_app", "running", "serve"]

log = logging.getLogger(__name__)


_ARCHIVES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_FORMATS = ("onnx", "torchscript", "generative")


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve from start-up.

    ``name[:version[:variant]]=PATH`` serves a local file, or a folder (a generative
    model: a Hugging Face checkpoint with its tokenizer); ``...=URL#sha256=HEX``
    fetches an artifact (verified, cached) with the bearer token in
    ``MERIDIAN_WORKER_ARTIFACT_TOKEN`` when set (a region agent passes its
    credential). A URL ending in ``.tar``/``.tar.gz``/``.tgz`` is an archive of a
    generative model's folder. ``#format=onnx|torchscript|generative`` after a path
    (``&format=...`` after a URL's sha256) says the format outright.
    """

    name: str
    version: str
    path: Path | None = None
    variant: str = "base"
    url: str | None = None
    sha256: str | None = None
    format: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        left, sep, source = text.partition("=")
        name, _, rest = left.partition(":")
        version, _, variant = rest.partition(":")
        if not sep or not name or not source:
            raise ValueError(f"expected name[:version[:variant]]=path-or-url, got '{text}'")
        source, _, fragment = source.partition("#")
        options: dict[str, str] = {}
        for item in filter(None, fragment.split("&")):
            key, eq, value = item.partition("=")
            if not eq or key not in ("sha256", "format"):
                raise ValueError(f"unknown option '{item}' in '{text}' (sha256=, format=)")
            options[key] = value
        fmt = options.get("format")
        if fmt is not None and fmt not in _FORMATS:
            raise ValueError(f"format '{fmt}' is not one of {', '.join(_FORMATS)}")
        if source.startswith(("http://", "https://")):
            sha256 = options.get("sha256", "")
            if len(sha256) != 64:
                raise ValueError(f"an artifact URL needs '#sha256=<64 hex digits>': '{text}'")
            if fmt is None and source.lower().endswith(_ARCHIVES):
                fmt = "generative"
            return cls(
                name,
                version or "1",
                variant=variant or "base",
                url=source,
                sha256=sha256,
                format=fmt,
            )
        if "sha256" in options:
            raise ValueError(f"'sha256' applies to artifact URLs only: '{text}'")
        return cls(name, version or "1", Path(source), variant=variant or "base", format=fmt)


def create_app(
    settings: WorkerSettings,
    *,
    dataplane: DataPlane | None = None,
    models: Sequence[ModelSpec] = (),
) -> FastAPI:
    dp = dataplane or DataPlane(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        grpc_server = None
        try:
            token = os.environ.get("MERIDIAN_WORKER_ARTIFACT_TOKEN") or None
            for spec in models:
                if spec.url is not None:
                    named = {"format": spec.format} if spec.format else {}
                    request = LoadRequest.model_validate(
                        {  # no format named: a tar archive is generative, else ONNX
                            "version": spec.version,
                            "variant": spec.variant,
                            "artifact_url": spec.url,
                            "sha256": spec.sha256,
                            "token": token,
                            **named,
                        }
                    )
                    await dp.load(spec.name, request)
                else:
                    assert spec.path is not None
                    await dp.load_path(
                        spec.name, spec.version, spec.path, variant=spec.variant, fmt=spec.format
                    )
            if settings.grpc_port is not None:
                from worker.grpc_service import GrpcServer

                grpc_server = GrpcServer(dp, settings.host, settings.grpc_port)
                await grpc_server.start()
                app.state.grpc_port = grpc_server.port
            await dp.start()
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace_s=2.0)
            await dp.stop()

    app = WorkerApp(
        title="Meridian worker",
        version=SERVER_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.dataplane = dp
    app.state.infer_decoder = InferDecoder()
    app.state.grpc_port = None
    install_routes(app)
    return app


@asynccontextmanager
async def running(app: FastAPI, host: str, port: int) -> AsyncIterator[int]:
    """Run ``app``'s lifespan (models, gRPC) and serve it over HTTP; yields the bound
    port. On exit, requests being answered finish (up to 5 s) before the lifespan ends."""
    from worker.http_server import HttpServer

    async with app.router.lifespan_context(app):
        server = HttpServer(app, app.state.dataplane)
        settings = app.state.dataplane.settings
        context = tls_server_context(settings)
        bound = await server.start(host, port, context)
        reloader = None
        if context is not None:  # renewed certificates (worker.access)
            from worker.access import CertificateReloader

            reloader = asyncio.create_task(
                CertificateReloader(context, settings.tls_cert, settings.tls_key).run()
            )
        try:
            yield bound
        finally:
            if reloader is not None:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
            await server.stop(grace_s=5.0)


def tls_server_context(settings: WorkerSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    from worker.access import server_context

    assert settings.tls_cert and settings.tls_key and settings.tls_ca
    return server_context(str(settings.tls_cert), str(settings.tls_key), str(settings.tls_ca))


def serve(settings: WorkerSettings, models: Sequence[ModelSpec] = ()) -> None:
    """Run the worker until interrupted (SIGINT, SIGTERM): HTTP plus gRPC, on uvloop."""
    import uvloop

    uvloop.run(_serve(settings, models))


async def _serve(settings: WorkerSettings, models: Sequence[ModelSpec]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings, models=models)
    async with running(app, settings.host, settings.http_port):
        # Everything loaded so far (libraries, models) lives as long as the process:
        # keep it out of the cyclic collector's passes over the young objects.
        gc.collect()
        gc.freeze()
        await stop.wait()
