"""Dependencies every admin API route uses, as ``Annotated`` aliases.

``require_scope(...)`` is the one place scopes are checked: ``admin`` may do
everything, otherwise the caller needs one of the listed scopes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from control_plane.autoscale.controller import Autoscaler
from control_plane.registry import Principal, Registry
from meridian.errors import (
    InvalidInput,
    PermissionDenied,
    Unauthenticated,
)

__all__ = [
    "IF_MATCH_PATTERN",
    "MAX_LIMIT",
    "Admin",
    "AutoscalerDep",
    "CatalogReader",
    "CurrentPrincipal",
    "IfMatch",
    "PageParams",
    "Paging",
    "Reader",
    "RegistryDep",
    "RowId",
    "current_principal",
    "require_scope",
    "set_etag",
]

MAX_LIMIT = 500
DEFAULT_LIMIT = 100

_bearer = HTTPBearer(auto_error=False, description="an API token (or a region agent credential)")


def get_registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def get_autoscaler(request: Request) -> Autoscaler | None:
    found: Autoscaler | None = getattr(request.app.state, "autoscaler", None)
    return found


# the leader's autoscaler when this process runs one; None otherwise
AutoscalerDep = Annotated["Autoscaler | None", Depends(get_autoscaler)]


def current_principal(
    registry: RegistryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise Unauthenticated("send a token as 'Authorization: Bearer <token>'")
    return registry.authenticate(credentials.credentials)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_scope(*scopes: str) -> Callable[[Principal], Principal]:
    """A dependency that lets the caller through when it holds one of ``scopes`` (or admin)."""
    needed = " or ".join(scopes) if scopes else "admin"

    def dependency(principal: CurrentPrincipal) -> Principal:
        if not principal.allows(*scopes):
            raise PermissionDenied(f"this needs the {needed} scope; {principal.name!r} lacks it")
        return principal

    dependency.__name__ = f"require_scope_{'_'.join(scopes) or 'admin'}"
    return dependency


Admin = Annotated[Principal, Depends(require_scope("admin"))]
Reader = Annotated[Principal, Depends(require_scope("read"))]
# what region agents need: the catalog and its artifacts
CatalogReader = Annotated[Principal, Depends(require_scope("read", "agent"))]


# a numeric id in a path (deployments, tokens): the range of the id columns
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    offset: int


def _paging(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> PageParams:
    return PageParams(limit=limit, offset=offset)


Paging = Annotated[PageParams, Depends(_paging)]


# what If-Match accepts: an ETag of this API ("3", W/"3", or bare 3), or * for any version
IF_MATCH_PATTERN = r'^(\*|(W/)?"[0-9]{1,18}"|[0-9]{1,18})$'


def _if_match(
    if_match: Annotated[
        str,
        Header(
            alias="If-Match",
            description='The ETag from your last GET, e.g. "3"; * for any version. Missing: 428.',
            pattern=IF_MATCH_PATTERN,
            examples=['"3"'],
        ),
    ],
) -> int | None:
    """The row version the client last saw; ``None`` for ``*``. A missing header is
    answered 428 (see ``errors``), not 422: the document lists it as required."""
    value = if_match.strip()
    if value == "*":
        return None
    tag = value.removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise InvalidInput(f'If-Match must be an ETag such as "3", not {value!r}')
    return int(tag)


IfMatch = Annotated[int | None, Depends(_if_match)]


def set_etag(response: Response, row_version: int) -> None:
    response.headers["ETag"] = f'"{row_version}"'
