"""Small pieces every route of the router answers with: JSON error bodies, header lookup."""

from __future__ import annotations

import orjson

from router.http11 import Response

__all__ = ["EVENT_STREAM", "JSON", "error", "header_value"]

JSON = [(b"content-type", b"application/json")]
EVENT_STREAM = b"text/event-stream"


def error(status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = orjson.dumps({"error": message})
    return Response(status, body, JSON + (extra or []))


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for k, v in headers:
        if k == name:
            return v
    return b""
