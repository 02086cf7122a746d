"""``/v1/models/{name}/versions/{version}/variants``: quantized forms of a version."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.schemas import Page, VariantCreate, VariantPublic

from .deps import Admin, CatalogReader, Paging, RegistryDep
from .errors import WRITE, error_responses

router = APIRouter(prefix="/models/{name}/versions/{version}/variants", tags=["variants"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_variant(
    name: str,
    version: str,
    body: VariantCreate,
    registry: RegistryDep,
    caller: Admin,
    response: Response,
) -> VariantPublic:
    created = registry.create_variant(name, version, body, actor=caller.name)
    response.headers["Location"] = f"/v1/models/{name}/versions/{version}/variants/{created.name}"
    return created


@router.get("", responses=error_responses(404))
def list_variants(
    name: str, version: str, registry: RegistryDep, _: CatalogReader, page: Paging
) -> Page[VariantPublic]:
    return registry.list_variants(name, version, limit=page.limit, offset=page.offset)


@router.get("/{variant}", responses=error_responses(404))
def get_variant(
    name: str, version: str, variant: str, registry: RegistryDep, _: CatalogReader
) -> VariantPublic:
    return registry.get_variant(name, version, variant)


@router.delete("/{variant}", status_code=204, responses=error_responses(*WRITE))
def delete_variant(
    name: str, version: str, variant: str, registry: RegistryDep, caller: Admin
) -> None:
    registry.delete_variant(name, version, variant, actor=caller.name)
