"""The REST inference route as a plain ASGI handler.

``POST /v2/models/{name}[/versions/{version}]/infer`` is the hot path, so it
skips the framework's routing, middleware and request objects: it reads the
body straight from ``receive`` (413 past the limit), decodes it with
:mod:`worker.rest_codec`, calls the data plane and sends the encoded answer.
While the request waits, a watcher listens for the client's disconnect and
cancels it, so a request nobody waits for is dropped from the batch queue.
Errors are encoded by :func:`worker.rest.error_body`, the same as every route.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meridian.errors import InvalidInput, MeridianError, PayloadTooLarge
from worker.dataplane import DataPlane
from worker.rest_codec import decode_infer, encode_infer, parse_header_length
from worker.tensors import InferenceRequest, InferenceResponse

__all__ = ["INFER_PATH", "handle_infer"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
CLIENT_CLOSED = 499  # no standard code: the client went away before the answer


class _Disconnected(Exception):
    pass


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    declared = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            declared = value
        elif key == b"content-encoding" and value not in (b"identity", b""):
            raise InvalidInput("compressed request bodies (Content-Encoding) are not supported")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared.decode()} bytes exceeds the {limit} byte limit"
        )
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the {limit} byte limit")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _infer_unless_disconnected(
    dp: DataPlane, request: InferenceRequest, receive: Receive
) -> InferenceResponse | None:
    """The inference result, or None when the client disconnected first (the
    queued request is then cancelled and the batcher skips it)."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    watcher.add_done_callback(lambda w: None if w.cancelled() else task.cancel())
    try:
        return await dp.infer(request)
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and task.uncancel() == 0:
            return None
        raise
    finally:
        watcher.cancel()


async def handle_infer(
    dp: DataPlane,
    match: re.Match[str],
    scope: Scope,
    receive: Receive,
    send: Send,
    error_body: Callable[[MeridianError], tuple[int, bytes, list[tuple[bytes, bytes]]]],
) -> None:
    try:
        body = await _read_body(scope, receive, dp.settings.max_request_bytes)
        header_length = parse_header_length(
            _header(scope, b"inference-header-content-length"), len(body)
        )
        request = decode_infer(body, header_length, match["name"], match["version"])
        result = await _infer_unless_disconnected(dp, request, receive)
        if result is None:
            await _send(send, CLIENT_CLOSED, b"", [])
            return
        payload, json_size = encode_infer(result, request)
    except _Disconnected:
        return
    except MeridianError as exc:
        status, payload, headers = error_body(exc)
        await _send(send, status, payload, headers)
        return
    except Exception:
        log.exception("unexpected error in inference")
        await _send(
            send,
            500,
            b'{"error":"internal server error","code":"internal"}',
            [(b"content-type", b"application/json")],
        )
        return
    if json_size is None:
        await _send(send, 200, payload, [(b"content-type", b"application/json")])
    else:
        await _send(
            send,
            200,
            payload,
            [
                (b"content-type", b"application/octet-stream"),
                (b"inference-header-content-length", str(json_size).encode()),
            ],
        )


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
