"""One mapping from failures to HTTP answers: ``{"error": ..., "detail": ...}``.

The same :class:`~control_plane.schemas.ApiError` documents them: :func:`error_responses`
builds the ``responses=`` of routes from the statuses they can answer, with an example
each, so the OpenAPI document lists what the code does.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from control_plane.schemas import ApiError
from meridian.errors import MeridianError, PreconditionRequired, Unauthenticated

__all__ = [
    "COMMON",
    "ETAG_WRITE",
    "WRITE",
    "error_responses",
    "install_error_handlers",
]

log = logging.getLogger("meridian.control_plane")

INTERNAL_MESSAGE = "internal error; the control plane logged it"


# status -> (when, an example body)
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "The body is not JSON at all (unparseable_body), or the request matches this document "
        "but breaks a rule it cannot state (invalid_input), e.g. max_replicas < min_replicas.",
        {"error": "invalid_input", "detail": "max_replicas must be >= min_replicas"},
    ),
    401: (
        "No bearer token, or an unknown, revoked or expired one.",
        {"error": "unauthenticated", "detail": "send a token as 'Authorization: Bearer <token>'"},
    ),
    403: (
        "The token lacks the scope this needs.",
        {"error": "permission_denied", "detail": "this needs the admin scope; 'ci' lacks it"},
    ),
    404: (
        "The resource, or one it refers to, does not exist.",
        {"error": "not_found", "detail": "model 'resnet' not found"},
    ),
    409: (
        "It conflicts with the registry's state (a duplicate, or something still uses it).",
        {"error": "conflict", "detail": "model 'resnet' already exists"},
    ),
    412: (
        "If-Match names an older version: fetch the resource again.",
        {
            "error": "precondition_failed",
            "detail": "model 'resnet' is at version 4, not 3; "
            "fetch it again and retry with its new ETag",
        },
    ),
    413: (
        "The body is larger than the control plane accepts.",
        {"error": "payload_too_large", "detail": "the artifact exceeds 1073741824 bytes"},
    ),
    422: (
        "The request does not match this document: each rejected input is in ``fields``.",
        {
            "error": "invalid_input",
            "detail": "lat (body): Input should be less than or equal to 90",
            "fields": [
                {"field": "lat (body)", "message": "Input should be less than or equal to 90"}
            ],
        },
    ),
    428: (
        "If-Match is missing: send the ETag of your last GET.",
        {
            "error": "precondition_required",
            "detail": "If-Match is required: send the ETag of your last GET so that "
            "concurrent changes are not overwritten",
        },
    ),
    503: (
        "The registry database (or a service this needs) is unavailable: retry.",
        {
            "error": "unavailable",
            "detail": "the registry database is unavailable; retry",
            "retry_after": 1,
        },
    ),
}

# every /v1 route: bad input, authentication, scope, validation, the database
COMMON = (400, 401, 403, 422, 503)
# any write may conflict, or meet a concurrent change of the same row
WRITE = (404, 409, 412)
# writes guarded by If-Match
ETAG_WRITE = (*WRITE, 428)


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route (or router) that can answer ``statuses`` with an
    :class:`ApiError`."""
    return {
        status: {
            "model": ApiError,
            "description": _ERRORS[status][0],
            "content": {"application/json": {"example": _ERRORS[status][1]}},
        }
        for status in sorted(set(statuses))
    }


def _field(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        where, rest = parts[0], parts[1:]
        return f"{'.'.join(rest) or where} ({where})" if rest else where
    return ".".join(parts)


async def _meridian_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MeridianError)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
    if exc.retry_after is not None:
        headers = {**(headers or {}), "Retry-After": str(max(1, round(exc.retry_after)))}
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def _only_if_match_missing(errors: list[Any]) -> bool:
    return bool(errors) and all(
        e.get("type") == "missing"
        and [str(p).lower() for p in e.get("loc", ())][:2] == ["header", "if-match"]
        for e in errors
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    if _only_if_match_missing(list(exc.errors())):
        return await _meridian_error(
            _request,
            PreconditionRequired(
                "If-Match is required: send the ETag of your last GET so that concurrent "
                "changes are not overwritten"
            ),
        )
    if any(e.get("type") == "json_invalid" for e in exc.errors()):
        return _unparseable("the body is not valid JSON")
    fields = [
        {"field": _field(e.get("loc", ())), "message": str(e.get("msg", "invalid"))}
        for e in exc.errors()
    ]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return JSONResponse(
        {"error": "invalid_input", "detail": detail, "fields": fields}, status_code=422
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (Starlette names only the first
    route that matched the path)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _unparseable(detail: str) -> JSONResponse:
    """A body that is not JSON at all: refused before anything else (authentication too)."""
    return JSONResponse({"error": "unparseable_body", "detail": detail}, status_code=400)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    if exc.status_code == 400:  # the body could not be read at all
        return _unparseable(f"the body could not be read: {exc.detail}")
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return JSONResponse(
        {"error": code, "detail": str(exc.detail)},
        status_code=exc.status_code,
        headers=headers or None,
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": "internal", "detail": INTERNAL_MESSAGE}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(MeridianError, _meridian_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
