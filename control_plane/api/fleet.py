"""REST routes of the fleet plane: the routing snapshot feed, region health, drain.

:func:`fleet_router` builds an ``APIRouter`` from its dependencies, so any app
can mount it:

- ``GET /v1/routing/snapshot``: the latest snapshot, ``ETag: "<version>"``. With
  ``If-None-Match`` and ``?wait=S`` it long-polls: it answers as soon as a newer
  snapshot exists, or 304 after ``S`` seconds; 503 while this replica cannot reach the
  coordination store (it cannot tell whether a newer one exists).
- ``GET /v1/routing/api-keys``: the keyring (end users' key digests and limits), the
  same way.
- ``GET /v1/regions/{name}/health``: state, reason, GPUs and workers of a region.
- ``POST /v1/regions/{name}/drain`` and ``/undrain``: operator draining.
"""

# no ``from __future__ import annotations``: FastAPI must see the route annotations, which
# use this factory's arguments (e.g. ``max_wait_s``), as objects.
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from control_plane.api.errors import error_responses
from control_plane.health.fleet_view import FleetView
from control_plane.health.snapshots import DocumentFeed, KeyringFeed, SnapshotFeed
from meridian.errors import InvalidInput, MeridianError, NotFound, Unavailable
from meridian.snapshot import HealthState

__all__ = ["fleet_router"]

SetDraining = Callable[[str, bool, str], Awaitable[str]]


def _error(exc: MeridianError) -> JSONResponse:
    headers = {"Retry-After": str(int(exc.retry_after))} if exc.retry_after else None
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def _parse_etag(value: str, current: int) -> int:
    tag = value.strip()
    if tag == "*":
        return current
    tag = tag.removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidInput(f"If-None-Match must be a snapshot ETag like '\"42\"', got {value!r}")
    return int(tag)


async def _unpublished_region(request: Request, name: str, snapshot_version: int) -> Response:
    """A region the registry has (``app.state.registry``, when the app has one) but the
    routing snapshot does not list yet: it was created moments ago, and the next
    snapshot will carry it. It serves nothing yet: down, not 404."""
    registry = getattr(request.app.state, "registry", None)
    if registry is None:
        return _error(NotFound(f"region {name!r} is not in the routing snapshot"))
    try:
        found = await anyio.to_thread.run_sync(registry.get_region, name)
    except MeridianError as exc:  # NotFound: no such region at all
        return _error(exc)
    return JSONResponse(
        {
            "region": name,
            "state": HealthState.DOWN.value,
            "routable": False,
            "snapshot_version": snapshot_version,
            "gpu_count": found.gpu_count,
            "healthy_gpus": 0,
            "capacity_rps": 0.0,
            "agent_connected": False,
            "reason": "not in the routing snapshot yet (the next one lists it)",
        }
    )


def _actor(principal: Any) -> str:
    for attr in ("name", "actor", "subject"):
        value = getattr(principal, attr, None)
        if isinstance(value, str) and value:
            return value
    return principal if isinstance(principal, str) and principal else "operator"


def _long_poll_route(
    router: APIRouter,
    path: str,
    feed: DocumentFeed[Any],
    what: str,
    read_auth: Callable[..., Any],
    max_wait_s: float,
) -> None:
    """``GET path``: the feed's latest document with ``ETag: "<version>"``; with
    ``If-None-Match`` and ``?wait=S``, a long-poll (the newer version, or 304 after S)."""

    def current() -> Response:
        return Response(
            content=feed.raw,
            media_type="application/json",
            headers={"ETag": f'"{feed.version}"', "Cache-Control": "no-cache"},
        )

    @router.get(
        path,
        dependencies=[Depends(read_auth)],
        summary=f"The {what}",
        responses={
            304: {"description": f"No newer {what} within `wait` seconds"},
            **error_responses(400, 503),
        },
    )
    async def get_document(
        wait: Annotated[
            float, Query(ge=0, le=max_wait_s, description="long-poll seconds with If-None-Match")
        ] = 0.0,
        if_none_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        try:
            if if_none_match is None:
                if feed.current is None and wait > 0:
                    await feed.wait_newer(0, wait)
                if feed.current is None:
                    raise Unavailable(f"no {what} has been published yet", retry_after=1)
                return current()
            known = _parse_etag(if_none_match, feed.version)
            if not feed.live:
                # cut off from the coordination store: "nothing newer" would be a guess
                raise Unavailable(
                    f"this replica cannot reach the coordination store; its {what} "
                    f"(version {feed.version}) may be stale: ask another replica",
                    retry_after=1,
                )
            if feed.version > known or (wait > 0 and await feed.wait_newer(known, wait)):
                return current()
            if feed.version < known:
                # a version from the future: this replica lags, or the ETag is made up
                raise InvalidInput(
                    f"{what} version {known} is newer than the latest ({feed.version})"
                )
            return Response(status_code=304, headers={"ETag": f'"{feed.version}"'})
        except MeridianError as exc:
            return _error(exc)


def fleet_router(
    feed: SnapshotFeed,
    fleet_view: FleetView,
    set_draining: SetDraining,
    *,
    read_auth: Callable[..., Any],
    admin_auth: Callable[..., Any],
    max_wait_s: float = 60.0,
    keyring: KeyringFeed | None = None,
) -> APIRouter:
    """``read_auth``/``admin_auth``: FastAPI dependencies (e.g. ``require_scope("read")``)."""
    router = APIRouter(tags=["fleet"])

    _long_poll_route(router, "/v1/routing/snapshot", feed, "routing snapshot", read_auth,
                     max_wait_s)  # fmt: skip
    if keyring is not None:
        _long_poll_route(router, "/v1/routing/api-keys", keyring, "API keyring", read_auth,
                         max_wait_s)  # fmt: skip

    @router.get(
        "/v1/regions/{name}/health",
        dependencies=[Depends(read_auth)],
        responses=error_responses(404, 503),
    )
    async def region_health(name: str, request: Request) -> Response:
        snapshot = feed.current
        region = snapshot.region(name) if snapshot is not None else None
        if region is None:
            return await _unpublished_region(request, name, snapshot.version if snapshot else 0)
        summary = fleet_view.summary(name)
        body: dict[str, Any] = {
            "region": name,
            "state": region.state.value,
            "routable": region.state.routable,
            "snapshot_version": snapshot.version if snapshot else 0,
            "gpu_count": region.gpu_count,
            "healthy_gpus": region.healthy_gpus,
            "capacity_rps": region.capacity_rps,
            "agent_connected": summary is not None and summary.connected,
        }
        if summary is None:
            body["reason"] = "no agent is connected"
        else:
            body.update(
                reason=summary.reason,
                agent_id=summary.agent_id,
                agent_version=summary.agent_version,
                replica=summary.replica,
                last_report_age_s=round(max(0.0, time.time() - summary.last_report_at), 3),
                gpus=[
                    {
                        "index": g.index,
                        "condition": g.condition,
                        "reason": g.reason,
                        "utilization": g.utilization,
                        "temperature_c": g.temperature_c,
                        "memory_used_bytes": g.memory_used_bytes,
                        "memory_total_bytes": g.memory_total_bytes,
                    }
                    for g in summary.gpus
                ],
                workers=[
                    {
                        "worker_id": w.worker_id,
                        "state": w.state.value,
                        "reason": w.reason,
                        "endpoint": w.endpoint,
                        "models": list(w.models),
                        "queue_depth": w.queue_depth,
                        "in_flight": w.in_flight,
                        "throughput_rps": w.throughput_rps,
                        "latency_p50_ms": w.latency_p50_ms,
                        "latency_p99_ms": w.latency_p99_ms,
                    }
                    for w in summary.workers
                ],
            )
        return JSONResponse(body)

    async def change_drain(name: str, draining: bool, principal: Any) -> Response:
        try:
            status = await set_draining(name, draining, _actor(principal))
        except MeridianError as exc:
            return _error(exc)
        return JSONResponse({"region": name, "status": status})

    @router.post("/v1/regions/{name}/drain", responses=error_responses(404, 503))
    async def drain(name: str, principal: Annotated[Any, Depends(admin_auth)]) -> Response:
        return await change_drain(name, True, principal)

    @router.post("/v1/regions/{name}/undrain", responses=error_responses(404, 503))
    async def undrain(name: str, principal: Annotated[Any, Depends(admin_auth)]) -> Response:
        return await change_drain(name, False, principal)

    return router
