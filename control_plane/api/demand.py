"""``/v1/demand/{name}``: a router holds a request for a model that no worker serves.

The router calls this (with its read token) when it holds a request for a model
whose deployments all stand at zero; the autoscaler activates one of them (the
hinted region's, when the router names one) at its next decision.
"""

from __future__ import annotations

import time

from fastapi import APIRouter

from control_plane.schemas import DemandAccepted, DemandCreate
from meridian.errors import NotFound, Unavailable

from .deps import AutoscalerDep, Reader, RegistryDep

router = APIRouter(prefix="/demand", tags=["autoscaling"])


@router.post("/{name}", status_code=202)
def post_demand(
    name: str,
    registry: RegistryDep,
    autoscaler: AutoscalerDep,
    _: Reader,
    body: DemandCreate | None = None,
) -> DemandAccepted:
    if autoscaler is None:
        raise Unavailable("autoscaling does not run on this control plane", retry_after=1)
    deployments = registry.list_deployments(model=name, limit=1, offset=0).total
    if deployments == 0:
        raise NotFound(f"model {name!r} is not deployed in any region")
    autoscaler.note_demand(name, body.region if body else None, time.monotonic())
    return DemandAccepted(model=name, deployments=deployments)
