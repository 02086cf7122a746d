"""The control plane's HTTP application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

import meridian
from control_plane.api import api_router
from control_plane.api.errors import install_error_handlers
from control_plane.autoscale.controller import Autoscaler
from control_plane.db import migrate
from control_plane.registry import Registry
from control_plane.settings import ControlPlaneSettings

__all__ = ["BOOTSTRAP_TOKEN_NAME", "create_app", "open_registry"]

log = logging.getLogger("meridian.control_plane")

BOOTSTRAP_TOKEN_NAME = "bootstrap-admin"


def open_registry(settings: ControlPlaneSettings) -> Registry:
    return Registry.open(
        settings.resolved_database_url,
        settings.resolved_artifact_dir,
        max_artifact_bytes=settings.max_artifact_bytes,
    )


def prepare(settings: ControlPlaneSettings, registry: Registry) -> None:
    """Migrate the schema and ensure the configured bootstrap admin token."""
    if settings.migrate_on_start:
        migrate.upgrade(settings.resolved_database_url)
    if settings.bootstrap_admin_token is not None:
        added = registry.ensure_token(
            settings.bootstrap_admin_token.get_secret_value(),
            name=BOOTSTRAP_TOKEN_NAME,
            scopes=["admin"],
            actor="bootstrap",
        )
        if added:
            log.info("added the configured bootstrap admin token")


def create_app(
    settings: ControlPlaneSettings,
    *,
    registry: Registry | None = None,
    autoscaler: Autoscaler | None = None,
) -> FastAPI:
    """The admin API. Pass ``registry`` to share one with other transports (gRPC), and the
    fleet plane's ``autoscaler`` to serve scaling status and take the routers' demand."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = registry is None
        reg = registry or open_registry(settings)
        try:
            await anyio.to_thread.run_sync(prepare, settings, reg)
            app.state.registry = reg
            app.state.autoscaler = autoscaler
            yield
        finally:
            if owned:
                reg.close()

    app = FastAPI(
        title="Meridian control plane",
        version=meridian.__version__,
        description="Admin API of the model and region registry.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api_router())

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
