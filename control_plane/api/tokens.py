"""``/v1/tokens``: API tokens (the token itself is shown once, at creation)."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.schemas import Page, TokenCreate, TokenCreated, TokenPublic, TokenRotate

from .deps import Admin, Paging, RegistryDep, RowId
from .errors import WRITE, error_responses

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", status_code=201, responses=error_responses(*WRITE))
def create_token(body: TokenCreate, registry: RegistryDep, caller: Admin) -> TokenCreated:
    return registry.create_token(body, actor=caller.name)


@router.get("")
def list_tokens(
    registry: RegistryDep, _: Admin, page: Paging, include_revoked: bool = False
) -> Page[TokenPublic]:
    return registry.list_tokens(
        include_revoked=include_revoked, limit=page.limit, offset=page.offset
    )


@router.post("/{token_id}/rotate", status_code=201, responses=error_responses(*WRITE))
def rotate_token(
    token_id: RowId, registry: RegistryDep, caller: Admin, body: TokenRotate | None = None
) -> TokenCreated:
    """A new token with the same name and scopes, shown this once; the old one stops
    working at once."""
    return registry.rotate_token(token_id, body or TokenRotate(), actor=caller.name)


@router.delete("/{token_id}", status_code=204, responses=error_responses(*WRITE))
def revoke_token(token_id: RowId, registry: RegistryDep, caller: Admin) -> None:
    registry.revoke_token(token_id, actor=caller.name)
