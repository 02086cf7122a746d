"""``/v1/models``: registered models."""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.schemas import ModelCreate, ModelPublic, ModelUpdate, Page

from .deps import Admin, CatalogReader, IfMatch, Paging, RegistryDep, set_etag
from .errors import ETAG_WRITE, WRITE, error_responses

router = APIRouter(prefix="/models", tags=["models"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_model(
    body: ModelCreate, registry: RegistryDep, caller: Admin, response: Response
) -> ModelPublic:
    created = registry.create_model(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/models/{created.name}"
    return created


@router.get("")
def list_models(registry: RegistryDep, _: CatalogReader, page: Paging) -> Page[ModelPublic]:
    return registry.list_models(limit=page.limit, offset=page.offset)


@router.get("/{name}", responses=error_responses(404))
def get_model(
    name: str, registry: RegistryDep, _: CatalogReader, response: Response
) -> ModelPublic:
    model = registry.get_model(name)
    set_etag(response, model.row_version)
    return model


@router.patch("/{name}", responses=error_responses(*ETAG_WRITE))
def update_model(
    name: str,
    body: ModelUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> ModelPublic:
    model = registry.update_model(name, body, expected_version=expected, actor=caller.name)
    set_etag(response, model.row_version)
    return model


@router.delete("/{name}", status_code=204, responses=error_responses(*ETAG_WRITE))
def delete_model(name: str, caller: Admin, expected: IfMatch, registry: RegistryDep) -> None:
    registry.delete_model(name, expected_version=expected, actor=caller.name)
