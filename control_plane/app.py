"""The control plane's HTTP application: ``create_app(settings)``."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

import meridian
from control_plane.api import api_router
from control_plane.api.errors import error_responses, install_error_handlers
from control_plane.autoscale.controller import Autoscaler
from control_plane.console.routes import STATIC_DIR, console_router
from control_plane.db import migrate
from control_plane.fleet.nudge import RegistryWriteNudge
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
    """The admin API, and (``settings.fleet_enabled``) the fleet plane: agents' gRPC server,
    health ledger, routing snapshots and the autoscaler, started and stopped with the app.
    ``autoscaler``: serve this one's scaling status and demand (the fleet plane's otherwise)."""
    owned = registry is None
    reg = registry or open_registry(settings)
    fleet = None
    if settings.fleet_enabled:
        from control_plane.fleet.plane import build_fleet

        fleet = build_fleet(settings, reg)
    if autoscaler is None and fleet is not None:
        autoscaler = fleet.runtime.autoscaler

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await anyio.to_thread.run_sync(prepare, settings, reg)
            app.state.registry = reg
            app.state.settings = settings
            app.state.autoscaler = autoscaler
            if fleet is not None:
                await fleet.start()
                app.state.fleet = fleet.runtime
                log.info("agents' gRPC on %s:%d", settings.grpc_host, fleet.runtime.grpc_port)
            yield
        finally:
            if fleet is not None:
                await fleet.stop()
            if owned:  # on a thread: it waits for queries still finishing (Database.dispose)
                await anyio.to_thread.run_sync(reg.close)

    app = FastAPI(
        title="Meridian control plane",
        version=meridian.__version__,
        description="Admin API of the model and region registry, and the fleet's health.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(api_router())
    if fleet is not None:
        # every fleet route needs a token with a scope, and validates its inputs
        app.include_router(fleet.routes, responses=error_responses(401, 403, 422))
        # demand hints from routers (up to one a second per model) change nothing there
        # and neither do routers' traffic reports and figures, nor console sign-ins
        skip = ("/v1/demand/", "/v1/traffic", "/v1/figures", "/ui/")
        app.add_middleware(RegistryWriteNudge, nudge=fleet.nudge, skip_prefixes=skip)
        # the operator's console: the page at /ui, fed by the fleet plane's event stream
        app.include_router(console_router(fleet.console))
        app.state.console = fleet.console
        app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="console-static")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
