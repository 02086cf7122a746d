"""``/v1/models/{name}/versions``: versions of a model (format and signature)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.schemas import Page, VersionCreate, VersionPublic, VersionUpdate

from .deps import Admin, CatalogReader, IfMatch, Paging, RegistryDep, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/models/{name}/versions", tags=["versions"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_version(
    name: str, body: VersionCreate, registry: RegistryDep, caller: Admin, response: Response
) -> VersionPublic:
    created = registry.create_version(name, body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/models/{name}/versions/{created.version}"
    return created


@router.get("", responses=error_responses(404))
def list_versions(
    name: str, registry: RegistryDep, _: CatalogReader, page: Paging
) -> Page[VersionPublic]:
    return registry.list_versions(name, limit=page.limit, offset=page.offset)


@router.get("/{version}", responses=error_responses(404))
def get_version(
    name: str, version: str, registry: RegistryDep, _: CatalogReader, response: Response
) -> VersionPublic:
    found = registry.get_version(name, version)
    set_etag(response, found.row_version)
    return found


@router.patch("/{version}", responses=error_responses(*ETAG_WRITE))
def update_version(
    name: str,
    version: str,
    body: VersionUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> VersionPublic:
    updated = registry.update_version(
        name, version, body, expected_version=expected, actor=caller.name
    )
    set_etag(response, updated.row_version)
    return updated


@router.delete("/{version}", status_code=204, responses=error_responses(*ETAG_WRITE))
def delete_version(
    name: str, version: str, caller: Admin, expected: IfMatch, registry: RegistryDep
) -> None:
    registry.delete_version(name, version, expected_version=expected, actor=caller.name)
