"""``/v1/regions``: regions and their agent credentials (shown once)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.db.models import RegionStatus
from control_plane.schemas import Page, RegionCreate, RegionCreated, RegionPublic, RegionUpdate

from .deps import Admin, IfMatch, Paging, Reader, RegistryDep, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/regions", tags=["regions"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_region(
    body: RegionCreate, registry: RegistryDep, caller: Admin, response: Response
) -> RegionCreated:
    created = registry.create_region(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/regions/{created.name}"
    return created


@router.get("")
def list_regions(
    registry: RegistryDep, _: Reader, page: Paging, status: RegionStatus | None = None
) -> Page[RegionPublic]:
    return registry.list_regions(status=status, limit=page.limit, offset=page.offset)


@router.get("/{name}", responses=error_responses(404))
def get_region(name: str, registry: RegistryDep, _: Reader, response: Response) -> RegionPublic:
    region = registry.get_region(name)
    set_etag(response, region.row_version)
    return region


@router.patch("/{name}", responses=error_responses(*ETAG_WRITE))
def update_region(
    name: str,
    body: RegionUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> RegionPublic:
    region = registry.update_region(name, body, expected_version=expected, actor=caller.name)
    set_etag(response, region.row_version)
    return region


@router.delete("/{name}", status_code=204, responses=error_responses(*ETAG_WRITE))
def delete_region(name: str, caller: Admin, expected: IfMatch, registry: RegistryDep) -> None:
    registry.delete_region(name, expected_version=expected, actor=caller.name)


@router.post("/{name}/credential", responses=error_responses(*WRITE))
def rotate_credential(
    name: str, registry: RegistryDep, caller: Admin, response: Response
) -> RegionCreated:
    """A new agent credential; the old one stops working at once."""
    region = registry.rotate_region_credential(name, actor=caller.name)
    set_etag(response, region.row_version)
    return region
