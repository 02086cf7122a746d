"""The REST inference route, shared by both HTTP front ends.

``POST /v2/models/{name}[/versions/{version}]/infer`` is the hot path.
:func:`answer_infer` is the route itself, independent of the server: it takes
the request's headers and body, decodes them with :mod:`worker.rest_codec`,
calls the data plane and returns the status, body and headers to send. Errors
are encoded by :func:`worker.rest_codec.error_body`, the same as every route.

The worker's own HTTP server (:mod:`worker.http_server`) calls its two halves,
:func:`begin_infer` and :func:`finish_infer`, directly (no task per request);
:func:`handle_infer` adapts it to ASGI for the framework app (used when the app
runs under an ASGI server): it reads the body straight from ``receive`` (413
past the limit) and, while the request waits, watches for the client's
disconnect and cancels it, so a request nobody waits for is dropped from the
batch queue.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from meridian.deadline import DEADLINE_HEADER, parse_deadline_ms
from meridian.errors import InvalidInput, MeridianError, PayloadTooLarge
from worker.dataplane import DataPlane, Queued
from worker.rest_codec import InferDecoder, encode_infer, error_body, parse_header_length
from worker.tensors import InferenceRequest

__all__ = [
    "CLIENT_CLOSED",
    "INFER_PATH",
    "Answer",
    "answer_infer",
    "begin_infer",
    "finish_infer",
    "handle_infer",
    "internal_error",
    "request_deadline",
]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Headers = Sequence[tuple[bytes, bytes]]
# Status, body and headers (without Content-Length) of an answer.
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]

INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")
CLIENT_CLOSED = 499  # no standard code: the client went away before the answer

_JSON = b"application/json"
_BINARY = b"application/octet-stream"
_HEADER_LENGTH = b"inference-header-content-length"


def internal_error() -> Answer:
    """The fixed answer to a bug: nothing about it leaks to the client."""
    return 500, b'{"error":"internal server error","code":"internal"}', [(b"content-type", _JSON)]


def check_headers(headers: Headers, limit: int) -> str | None:
    """Refuse compressed bodies and a declared size past ``limit``; returns the
    ``Inference-Header-Content-Length`` value, if any."""
    header_length = None
    for key, value in headers:
        if key == _HEADER_LENGTH:
            header_length = value.decode("latin-1")
        elif key == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise PayloadTooLarge(
                    f"request body of {value.decode()} bytes exceeds the {limit} byte limit"
                )
        elif key == b"content-encoding" and value not in (b"identity", b""):
            raise InvalidInput("compressed request bodies (Content-Encoding) are not supported")
    return header_length


def request_deadline(headers: Headers) -> float | None:
    """The ``x-meridian-deadline-ms`` header as a ``time.monotonic()`` instant, or None."""
    for key, value in headers:
        if key == DEADLINE_HEADER:
            try:
                ms = parse_deadline_ms(value)
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
            return None if ms is None else time.monotonic() + ms / 1000.0
    return None


def begin_infer(
    dp: DataPlane,
    decoder: InferDecoder,
    model: str,
    version: str | None,
    headers: Headers,
    body: bytes,
) -> Answer | tuple[Queued, InferenceRequest]:
    """Decode and queue a request: the queued request (finish it with
    :func:`finish_infer` once its future is done), or at once the answer to a
    request refused before it reached the queue."""
    try:
        header_length = parse_header_length(
            check_headers(headers, dp.settings.max_request_bytes), len(body)
        )
        deadline = request_deadline(headers)
        request = decoder.decode(body, header_length, model, version)
        return dp.submit(request, deadline), request
    except MeridianError as exc:
        return error_body(exc)
    except Exception:
        log.exception("unexpected error in inference")
        return internal_error()


def finish_infer(queued: Queued, request: InferenceRequest) -> Answer:
    """The answer to a queued request whose future is done (not cancelled)."""
    try:
        payload, json_size = encode_infer(queued.response(), request)
    except MeridianError as exc:
        return error_body(exc)
    except Exception:
        log.exception("unexpected error in inference")
        return internal_error()
    if json_size is None:
        return 200, payload, [(b"content-type", _JSON)]
    return (
        200,
        payload,
        [(b"content-type", _BINARY), (_HEADER_LENGTH, str(json_size).encode())],
    )


async def answer_infer(
    dp: DataPlane,
    decoder: InferDecoder,
    model: str,
    version: str | None,
    headers: Headers,
    body: bytes,
) -> Answer:
    """Decode, infer, encode. Cancelling the caller cancels the queued request."""
    started = begin_infer(dp, decoder, model, version, headers, body)
    if len(started) == 3:
        return started
    queued, request = started
    try:
        await queued.model.batcher.wait(queued.future, request.timeout_s)
    except MeridianError as exc:
        return error_body(exc)
    except Exception:
        log.exception("unexpected error in inference")
        return internal_error()
    return finish_infer(queued, request)


# -- the ASGI adapter -------------------------------------------------------------------


class _Disconnected(Exception):
    pass


async def _read_body(receive: Receive, limit: int) -> bytes:
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


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(answer: Awaitable[Answer], receive: Receive) -> Answer | None:
    """The answer, or None when the client disconnected first (the queued
    request is then cancelled and the batcher skips it)."""
    task = asyncio.current_task()
    assert task is not None
    watcher = asyncio.ensure_future(_until_disconnected(receive))
    watcher.add_done_callback(lambda w: None if w.cancelled() else task.cancel())
    try:
        return await answer
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled() and task.uncancel() == 0:
            return None
        raise
    finally:
        watcher.cancel()


async def handle_infer(
    dp: DataPlane,
    decoder: InferDecoder,
    match: re.Match[str],
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """:func:`answer_infer` as an ASGI application."""
    headers: Headers = scope["headers"]
    try:
        check_headers(headers, dp.settings.max_request_bytes)
        body = await _read_body(receive, dp.settings.max_request_bytes)
    except _Disconnected:
        return
    except MeridianError as exc:
        await _send(send, *error_body(exc))
        return
    answer = await _unless_disconnected(
        answer_infer(dp, decoder, match["name"], match["version"], headers, body), receive
    )
    await _send(send, *(answer or (CLIENT_CLOSED, b"", [])))


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
