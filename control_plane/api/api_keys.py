"""``/v1/api-keys``: end users' keys for the router, with their rate limits.

The key is shown once, at creation. Routers learn of new, changed and revoked keys
through the keyring (digests and limits only), within about a second.
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from control_plane.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyPublic, ApiKeyUpdate, Page

from .deps import Admin, IfMatch, Paging, RegistryDep, set_etag

router = APIRouter(prefix="/api-keys", tags=["api keys"])


@router.post("", status_code=201)
def create_api_key(
    body: ApiKeyCreate, registry: RegistryDep, caller: Admin, response: Response
) -> ApiKeyCreated:
    created = registry.create_api_key(body, actor=caller.name)
    set_etag(response, created.row_version)
    response.headers["Location"] = f"/v1/api-keys/{created.name}"
    return created


@router.get("")
def list_api_keys(
    registry: RegistryDep, _: Admin, page: Paging, include_revoked: bool = False
) -> Page[ApiKeyPublic]:
    return registry.list_api_keys(
        include_revoked=include_revoked, limit=page.limit, offset=page.offset
    )


@router.get("/{name}")
def get_api_key(name: str, registry: RegistryDep, _: Admin, response: Response) -> ApiKeyPublic:
    key = registry.get_api_key(name)
    set_etag(response, key.row_version)
    return key


@router.patch("/{name}")
def update_api_key(
    name: str,
    body: ApiKeyUpdate,
    caller: Admin,
    expected: IfMatch,
    registry: RegistryDep,
    response: Response,
) -> ApiKeyPublic:
    """Change a key's limits or models (If-Match as for every update)."""
    key = registry.update_api_key(name, body, expected_version=expected, actor=caller.name)
    set_etag(response, key.row_version)
    return key


@router.delete("/{name}", status_code=204)
def revoke_api_key(name: str, registry: RegistryDep, caller: Admin) -> None:
    """Revoke a key (idempotent); the name is not reused."""
    registry.revoke_api_key(name, actor=caller.name)
