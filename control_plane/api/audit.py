"""``/v1/audit``: who changed what, newest first."""

from __future__ import annotations

from fastapi import APIRouter

from control_plane.schemas import AuditPublic, Page

from .deps import Paging, Reader, RegistryDep

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def list_audit(
    registry: RegistryDep,
    _: Reader,
    page: Paging,
    entity: str | None = None,
    entity_key: str | None = None,
    actor: str | None = None,
    action: str | None = None,
) -> Page[AuditPublic]:
    return registry.list_audit(
        entity=entity,
        entity_key=entity_key,
        actor=actor,
        action=action,
        limit=page.limit,
        offset=page.offset,
    )
