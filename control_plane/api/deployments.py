"""``/v1/deployments``: model versions placed in regions."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from control_plane.autoscale.policy import ScalingDecision
from control_plane.schemas import (
    DeploymentCreate,
    DeploymentPublic,
    DeploymentUpdate,
    Page,
    ScalingDecisionPublic,
    ScalingPublic,
)

from .deps import Admin, AutoscalerDep, IfMatch, Paging, Reader, RegistryDep, RowId, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_deployment(
    body: DeploymentCreate, registry: RegistryDep, caller: Admin, response: Response
) -> DeploymentPublic:
    created = registry.create_deployment(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/deployments/{created.id}"
    return created


@router.get("")
def list_deployments(
    registry: RegistryDep,
    _: Reader,
    page: Paging,
    model: str | None = None,
    version: str | None = None,
    region: str | None = None,
) -> Page[DeploymentPublic]:
    return registry.list_deployments(
        model=model, version=version, region=region, limit=page.limit, offset=page.offset
    )


@router.get("/{deployment_id}", responses=error_responses(404))
def get_deployment(
    deployment_id: RowId, registry: RegistryDep, _: Reader, response: Response
) -> DeploymentPublic:
    found = registry.get_deployment(deployment_id)
    set_etag(response, found.row_version)
    return found


@router.patch("/{deployment_id}", responses=error_responses(*ETAG_WRITE))
def update_deployment(
    deployment_id: RowId,
    body: DeploymentUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> DeploymentPublic:
    updated = registry.update_deployment(
        deployment_id, body, expected_version=expected, actor=caller.name
    )
    set_etag(response, updated.row_version)
    return updated


@router.delete("/{deployment_id}", status_code=204, responses=error_responses(*ETAG_WRITE))
def delete_deployment(
    deployment_id: RowId, caller: Admin, expected: IfMatch, registry: RegistryDep
) -> None:
    registry.delete_deployment(deployment_id, expected_version=expected, actor=caller.name)


@router.get("/{deployment_id}/scaling", responses=error_responses(404))
def get_scaling(
    deployment_id: RowId,
    request: Request,
    registry: RegistryDep,
    autoscaler: AutoscalerDep,
    _: Reader,
) -> ScalingPublic:
    """Current and desired replicas and the latest decisions with their reasons."""
    found = registry.get_deployment(deployment_id)
    fleet = getattr(request.app.state, "fleet", None)
    leading = None
    if fleet is not None and autoscaler is fleet.autoscaler:
        leading = bool(fleet.leadership.is_leader)
    status = autoscaler.status(deployment_id) if autoscaler is not None else None
    now = time.monotonic()

    def public(d: ScalingDecision) -> ScalingDecisionPublic:
        return ScalingDecisionPublic(
            at_s_ago=round(max(0.0, now - d.at), 3),
            current=d.current,
            desired=d.desired,
            reason=d.reason,
            panic=d.panic,
            stable_demand=d.stable_demand,
            panic_demand=d.panic_demand,
        )

    return ScalingPublic(
        deployment_id=found.id,
        model=found.model,
        version=found.version,
        region=found.region,
        min_replicas=found.min_replicas,
        max_replicas=found.max_replicas,
        autoscale_pinned=found.autoscale_pinned,
        pinned_replicas=found.pinned_replicas,
        autoscaler_running=autoscaler is not None,
        autoscaler_leading=leading,
        ready_replicas=status.ready if status else None,
        desired_replicas=status.desired if status else None,
        last_decision=public(status.last) if status and status.last else None,
        decisions=[public(d) for d in reversed(status.decisions)] if status else [],
        ready_after_s=list(reversed(status.ready_after_s)) if status else [],
        cold_starts_s=list(reversed(status.cold_starts_s)) if status else [],
    )
