"""``/v1/deployments``: model versions placed in regions."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.schemas import DeploymentCreate, DeploymentPublic, DeploymentUpdate, Page

from .deps import Admin, IfMatch, Paging, Reader, RegistryDep, RowId, set_etag

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post("", status_code=201)
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


@router.get("/{deployment_id}")
def get_deployment(
    deployment_id: RowId, registry: RegistryDep, _: Reader, response: Response
) -> DeploymentPublic:
    found = registry.get_deployment(deployment_id)
    set_etag(response, found.row_version)
    return found


@router.patch("/{deployment_id}")
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


@router.delete("/{deployment_id}", status_code=204)
def delete_deployment(
    deployment_id: RowId, caller: Admin, expected: IfMatch, registry: RegistryDep
) -> None:
    registry.delete_deployment(deployment_id, expected_version=expected, actor=caller.name)
