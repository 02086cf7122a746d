"""The worker process: ``create_app`` builds the REST app whose lifespan also runs
the gRPC server, so both transports share one event loop and one data plane."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from worker.dataplane import SERVER_VERSION, DataPlane
from worker.rest import WorkerApp, install_routes
from worker.settings import WorkerSettings

__all__ = ["ModelSpec", "create_app", "serve"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A model file to serve from start-up: ``name:version=path``."""

    name: str
    version: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        left, sep, path = text.partition("=")
        name, _, version = left.partition(":")
        if not sep or not name or not path:
            raise ValueError(f"expected name[:version]=path, got '{text}'")
        return cls(name, version or "1", Path(path))


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
            for spec in models:
                await dp.load_path(spec.name, spec.version, spec.path)
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
    app.state.grpc_port = None
    install_routes(app)
    return app


def serve(settings: WorkerSettings, models: Sequence[ModelSpec] = ()) -> None:
    """Run the worker until interrupted: uvicorn (uvloop, httptools) plus gRPC."""
    import uvicorn

    config = uvicorn.Config(
        create_app(settings, models=models),
        host=settings.host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        proxy_headers=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
