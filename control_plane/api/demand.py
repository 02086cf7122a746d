"""``/v1/demand/{name}``: a router holds a request for a model that no worker serves.

The router calls this (with its read token) when it holds a request for a model
whose deployments all stand at zero; the autoscaler activates one of them (the
hinted region's, when the router names one) at once. Any replica may take it: the
fleet plane passes it to the leader's autoscaler through the coordination backend.
"""

from __future__ import annotations

import time

import anyio
from fastapi import APIRouter, Request

from control_plane.schemas import DemandAccepted, DemandCreate
from meridian.errors import NotFound, Unavailable

from .deps import AutoscalerDep, Reader, RegistryDep
from .errors import error_responses

router = APIRouter(prefix="/demand", tags=["autoscaling"])


@router.post("/{name}", status_code=202, responses=error_responses(404))
async def post_demand(
    name: str,
    request: Request,
    registry: RegistryDep,
    autoscaler: AutoscalerDep,
    _: Reader,
    body: DemandCreate | None = None,
) -> DemandAccepted:
    if autoscaler is None:
        raise Unavailable("autoscaling does not run on this control plane", retry_after=1)
    page = await anyio.to_thread.run_sync(
        lambda: registry.list_deployments(model=name, limit=1, offset=0)
    )
    deployments = page.total
    if deployments == 0:
        raise NotFound(f"model {name!r} is not deployed in any region")
    region = body.region if body else None
    fleet = getattr(request.app.state, "fleet", None)
    if fleet is not None and fleet.autoscaler is autoscaler:
        await fleet.note_demand(name, region)  # through coordination: the leader decides
    else:
        autoscaler.note_demand(name, region, time.monotonic())
    return DemandAccepted(model=name, deployments=deployments)
