"""The console's HTTP routes: the page, its sign-in, its event stream, region history.

- ``GET /ui``: the page (static; the built JS and CSS under ``/ui/static/``).
- ``POST /ui/session`` with ``Authorization: Bearer <token>``: checks the token and
  answers who it is and its scopes, and sets the ``meridian_console`` cookie for the
  event stream (``EventSource`` cannot send headers). The cookie holds the token, is
  ``HttpOnly`` (page scripts cannot read it), ``SameSite=Strict`` (no other site's
  page sends it), ``Secure`` over HTTPS, scoped to ``Path=/ui/events`` (nothing else
  accepts it) and expires after ``COOKIE_MAX_AGE_S``; the page signs in again before
  then. The stream is read-only, so the cookie can change nothing. Every other call
  the page makes sends the token in the ``Authorization`` header, as any client does.
- ``DELETE /ui/session``: clears the cookie.
- ``GET /ui/events[?region=NAME]``: the fleet state as server-sent events (one ``state``
  event per change, the whole state each time, and with ``region`` that region's GPUs
  and workers as a ``region`` event); the token is checked when the stream opens,
  and the stream ends after ``STREAM_MAX_S`` (the browser reconnects, and the token
  is checked again).
- ``GET /ui/history/{region}``: the region's recent queue depth, latency and TTFT.

These routes are not in the OpenAPI document (``include_in_schema=False``): the
document describes the JSON admin API, and a page, a cookie sign-in and an event
stream are not operations of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Cookie, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from control_plane.api.deps import CurrentPrincipal, Reader
from control_plane.console.hub import ConsoleHub
from control_plane.registry import Registry
from meridian.errors import MeridianError, PermissionDenied, Unauthenticated

__all__ = ["COOKIE", "STATIC_DIR", "console_router"]

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "meridian_console"
COOKIE_MAX_AGE_S = 15 * 60
STREAM_MAX_S = 5 * 60.0

# the page loads only its own files and talks only to its own origin
CSP = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def _error(exc: MeridianError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status)


def console_router(hub: ConsoleHub) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/ui")
    def page() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    @router.post("/ui/session")
    def sign_in(principal: CurrentPrincipal, request: Request) -> Response:
        if not principal.allows("read"):
            raise PermissionDenied(f"the console needs the read scope; {principal.name!r} lacks it")
        auth = request.headers.get("authorization", "")
        token = auth.partition(" ")[2].strip()
        response = JSONResponse(
            {
                "name": principal.name,
                "scopes": sorted(principal.scopes),
                "admin": principal.allows("admin"),
                "cookie_max_age_s": COOKIE_MAX_AGE_S,
            }
        )
        response.set_cookie(
            COOKIE,
            token,
            max_age=COOKIE_MAX_AGE_S,
            path="/ui/events",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    @router.delete("/ui/session", status_code=204)
    def sign_out(request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(
            COOKIE, path="/ui/events", secure=request.url.scheme == "https", httponly=True,
            samesite="strict",
        )  # fmt: skip
        return response

    @router.get("/ui/events")
    async def events(
        request: Request,
        meridian_console: Annotated[str | None, Cookie()] = None,
        region: Annotated[str | None, Query(max_length=64)] = None,
    ) -> Response:
        if not meridian_console:
            return _error(Unauthenticated("sign in first: POST /ui/session sets the cookie"))
        registry: Registry = request.app.state.registry
        try:
            principal = await anyio.to_thread.run_sync(registry.authenticate, meridian_console)
        except MeridianError as exc:
            return _error(exc)
        if not principal.allows("read"):
            return _error(PermissionDenied(f"{principal.name!r} lacks the read scope"))
        return StreamingResponse(
            hub.stream(hub.subscribe(region), max_s=STREAM_MAX_S),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.get("/ui/history/{region}")
    def history(region: str, _: Reader) -> dict[str, Any]:
        return {
            "region": region,
            "fields": ["t", "queue", "p50_ms", "p99_ms", "ttft_ms"],
            "samples": hub.history(region),
        }

    return router
