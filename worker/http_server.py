"""The worker's HTTP/1.1 server: asyncio protocols and ``httptools``.

A one-row inference request is a few hundred bytes each way, so the cost of the
HTTP stack, not of the model, decides how many the worker can take. This server
does the least HTTP/1.1 needs: keep-alive, ``Content-Length`` and chunked
request bodies (via the parser), ``Expect: 100-continue``, a body size limit
(413), pipelined requests answered in order, and one write per response.

Inference is decoded and queued as soon as the request is parsed
(:func:`worker.rest_infer.begin_infer`) and answered from the batch's completion
callback (:func:`worker.rest_infer.finish_infer`), with no task per request; every
other request goes to the framework app in process, as ASGI, so those routes are
written once. When a client disconnects, its queued request is cancelled, which
drops it from the batch queue.

An ASGI answer in one body message is written in one piece with its
``Content-Length``; one that comes in several (``more_body``: server-sent token
streams) is written as each message comes, with chunked transfer encoding, and
the app waits while the client is not reading. A client that disconnects cancels
the task running the route, so a stream's generator is closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

import httptools

from meridian.errors import PayloadTooLarge
from worker.access import request_refusal, role_of_transport  # TLS: the peer's fleet role
from worker.dataplane import DataPlane, Queued
from worker.rest_codec import InferDecoder, error_body
from worker.rest_infer import INFER_PATH, Answer, begin_infer, finish_infer, internal_error
from worker.tensors import InferenceRequest

__all__ = ["HttpServer"]

log = logging.getLogger(__name__)

AsgiApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[MutableMapping[str, Any]]],
        Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ],
    Awaitable[None],
]

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    422: b"Unprocessable Content",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
_STATUS_LINES = {
    status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in _REASONS.items()
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
# Headers the server writes itself; the app's own are dropped.
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"date"})
_HEADERS_TOO_LARGE: Answer = (
    431,
    b'{"error":"request headers are too large","code":"headers_too_large"}',
    [(b"content-type", b"application/json")],
)
_MAX_PIPELINED = 16  # parsed requests waiting per connection before reading pauses
_MAX_HEADERS = 100
_MAX_HEADER_BYTES = 64 * 1024


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


class _Clock:
    """The ``Date`` header, formatted once a second."""

    def __init__(self) -> None:
        self._second = 0
        self._header = b""

    def header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: %s\r\n" % email.utils.formatdate(now, usegmt=True).encode()
        return self._header


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes
    keep_alive: bool
    refused: Answer | None  # answered without running the route (413, 431)
    http_version: str = "1.1"


class _InferenceCall:
    """An inference request in the batch queue, answered from its future's callback.

    A disconnect cancels the future (the batcher then skips the request); the
    request's ``timeout`` parameter is a timer that does the same and answers 504."""

    __slots__ = ("_conn", "_expired", "_http", "_queued", "_request", "_timer")

    def __init__(
        self, conn: _Connection, http: _Request, queued: Queued, request: InferenceRequest
    ) -> None:
        self._conn = conn
        self._http = http
        self._queued = queued
        self._request = request
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        future = queued.future
        conn.current = future
        if request.timeout_s is not None:
            self._timer = asyncio.get_running_loop().call_later(request.timeout_s, self._expire)
        future.add_done_callback(self._done)

    def _expire(self) -> None:
        self._expired = True
        self._queued.future.cancel()

    def _done(self, future: asyncio.Future[Any]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not future.cancelled():
            answer = finish_infer(self._queued, self._request)
        elif self._expired and self._request.timeout_s is not None:
            answer = error_body(self._queued.model.batcher.timeout_error(self._request.timeout_s))
        else:
            return  # the client went away: nobody to answer
        self._conn.answered(self._http, answer)


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self.client: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._refused: Answer | None = None
        self._waiting: deque[_Request] = deque()
        self._paused = False  # reading paused: too many requests waiting
        self._write_paused = False  # reading paused: the client is not reading answers
        self._drained: asyncio.Future[None] | None = None  # a stream waits for writes to drain
        self.last_active = self._loop.time()
        # What the request being answered waits on: its queued inference, or the
        # task running another route. None while nothing is being answered.
        self.current: asyncio.Future[Any] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if peer else None
        self.role = role_of_transport(transport)  # None: plaintext
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._waiting.clear()
        self._wake_writer()
        if self.current is not None:
            self.current.cancel()  # the client is gone: drop what it asked for

    def data_received(self, data: bytes) -> None:
        self.last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(f"malformed HTTP request: {exc}".encode())

    def pause_writing(self) -> None:
        # Answers pile up unread: read no more requests until they drain.
        self._write_paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        if self._transport is not None and not self._paused:
            self._transport.resume_reading()

    def _wake_writer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    async def drain(self) -> None:
        """Wait while the client is not reading what was written (a stream's backpressure)."""
        if self._write_paused and self._transport is not None:
            if self._drained is None:
                self._drained = self._loop.create_future()
            await self._drained

    def write_raw(self, data: bytes) -> bool:
        """Write part of a streamed answer; False once the connection is gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(data)
        return True

    def idle(self) -> bool:
        """Nothing being answered or waiting to be."""
        return self.current is None and not self._waiting

    # -- httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._refused = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if len(self._headers) >= _MAX_HEADERS or self._header_bytes > _MAX_HEADER_BYTES:
            if self._refused is None:
                self._refused = _HEADERS_TOO_LARGE
            return
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        limit = self._server.max_body_bytes
        for key, value in self._headers:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                self._refuse_body(f"request body of {value.decode()} bytes exceeds the")
            elif (
                key == b"expect"
                and value.lower() == b"100-continue"
                and self._refused is None
                and self._transport is not None
            ):
                self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._refused is not None:
            return
        self._body_len += len(body)
        if self._body_len > self._server.max_body_bytes:
            self._refuse_body("request body exceeds the")
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        parser = self._parser
        url = httptools.parse_url(self._url)
        refused = self._refused
        request = _Request(
            parser.get_method().decode(),
            url.path.decode("latin-1") if url.path else "/",
            url.query or b"",
            self._headers,
            self._body[0] if len(self._body) == 1 else b"".join(self._body),
            parser.should_keep_alive() and refused is None,
            refused,
            parser.get_http_version(),
        )
        self._body = []
        self._waiting.append(request)
        if self.current is None:
            self._answer_waiting()
        elif len(self._waiting) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    # -- answering -----------------------------------------------------------------------
    def _refuse_body(self, what: str) -> None:
        if self._refused is None:
            limit = self._server.max_body_bytes
            self._refused = error_body(PayloadTooLarge(f"{what} {limit} byte limit"))
        self._body = []

    def _fail(self, message: bytes) -> None:
        """A request that cannot be parsed: answer 400 and close."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            if self.current is None:  # else an answer is still due first: just close
                transport.write(self._server.encode(400, message, [], keep_alive=False))
            transport.close()

    def _answer_waiting(self) -> None:
        """Answer parsed requests in order until one has to wait (or none is left).

        Inference is decoded and queued here, and answered from the batch's
        completion callback; other routes run as a task; answers known at once
        (errors, refusals) are written at once."""
        while self.current is None and self._waiting:
            request = self._waiting.popleft()
            transport = self._transport
            if transport is None:
                return
            if self._paused and len(self._waiting) < _MAX_PIPELINED // 2:
                self._paused = False
                if not self._write_paused:
                    transport.resume_reading()
            if request.refused is not None:
                answer = request.refused
            elif self._server.tls and (
                refusal := request_refusal(self.role, request.method, request.path)
            ):
                answer = error_body(refusal)
            elif request.method == "POST" and (match := INFER_PATH.match(request.path)):
                started = begin_infer(
                    self._server.dataplane,
                    self._server.decoder,
                    match["name"],
                    match["version"],
                    request.headers,
                    request.body,
                )
                if len(started) == 3:
                    answer = started
                else:
                    _InferenceCall(self, request, *started)
                    return
            else:
                self.current = self._loop.create_task(self._route(request))
                return
            if not self._write(request, answer):
                return

    def _write(self, request: _Request, answer: Answer) -> bool:
        """Send ``answer``; whether the connection stays open for more."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        status, body, headers = answer
        head_only = request.method == "HEAD"
        transport.write(self._server.encode(status, body, headers, request.keep_alive, head_only))
        if not request.keep_alive:
            transport.close()
            return False
        return True

    def answered(self, request: _Request, answer: Answer) -> None:
        """The request being answered is done: send it, go on with the next."""
        self.current = None
        if self._write(request, answer):
            self._answer_waiting()

    def streamed(self, request: _Request, complete: bool) -> None:
        """A streamed answer was written out: go on with the next request, or close
        the connection when the stream broke off or the client asked to."""
        self.current = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if not complete or not request.keep_alive or request.http_version != "1.1":
            transport.close()
            return
        self._answer_waiting()

    async def _route(self, request: _Request) -> None:
        stream = _StreamedAnswer(self, request)
        answer = await self._server.respond(request, self, stream)
        if stream.started:
            self.streamed(request, stream.complete)
        else:
            self.answered(request, answer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _StreamedAnswer:
    """An ASGI answer written as its body messages come (chunked transfer encoding;
    on HTTP/1.0, the body runs until the connection closes)."""

    __slots__ = ("_chunked", "_conn", "_request", "complete", "started")

    def __init__(self, conn: _Connection, request: _Request) -> None:
        self._conn = conn
        self._request = request
        self._chunked = request.http_version == "1.1"
        self.started = False
        self.complete = False

    async def start(self, head: bytes) -> None:
        self.started = True
        self._conn.write_raw(head)
        await self._conn.drain()

    async def body(self, data: bytes, more: bool) -> None:
        if self._request.method == "HEAD":
            frame = b""
        elif self._chunked:
            frame = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
            if not more:
                frame += b"0\r\n\r\n"
        else:
            frame = data
        if frame and not self._conn.write_raw(frame):
            raise ConnectionResetError("the client went away")
        if not more:
            self.complete = True
        await self._conn.drain()


class HttpServer:
    """Serves ``app`` (ASGI) on one listening socket, inference calls directly.

    A connection with nothing to answer and no bytes received for ``keep_alive_s``
    is closed."""

    def __init__(self, app: AsgiApp, dataplane: DataPlane, *, keep_alive_s: float = 5.0) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        self._sweeper: asyncio.TimerHandle | None = None
        self.dataplane = dataplane
        self.max_body_bytes = dataplane.settings.max_request_bytes
        self.decoder = InferDecoder()
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._clock = _Clock()
        self._address: tuple[str, int] = ("", 0)
        self.tls = False

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port``; with ``ssl_context`` (worker.access.server_context),
        TLS with fleet client certificates, whose roles decide what they may ask."""
        loop = asyncio.get_running_loop()
        self.tls = ssl_context is not None
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=ssl_context, backlog=2048,
            reuse_address=True,
        )  # fmt: skip
        sockname = self._server.sockets[0].getsockname()
        self._address = (str(sockname[0]), int(sockname[1]))
        self._sweep()
        return self._address[1]

    def _sweep(self) -> None:
        """Close idle keep-alive connections; runs every second or so."""
        loop = asyncio.get_running_loop()
        horizon = loop.time() - self.keep_alive_s
        for conn in [c for c in self.connections if c.last_active < horizon and c.idle()]:
            conn.close()
        self._sweeper = loop.call_later(min(1.0, self.keep_alive_s / 2), self._sweep)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop listening, let requests being answered finish (up to ``grace_s``),
        then close every connection."""
        if self._server is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._server.close()
        busy = [c.current for c in self.connections if c.current is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace_s)
        for conn in list(self.connections):
            conn.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()
        self._server = None

    def stream_head(
        self, status: int, headers: list[tuple[bytes, bytes]], request: _Request
    ) -> bytes:
        """The head of a streamed answer."""
        parts = [_status_line(status), self._clock.header()]
        for key, value in headers:
            parts += [key, b": ", value, b"\r\n"]
        if request.http_version == "1.1":
            parts.append(b"transfer-encoding: chunked\r\n")
            if not request.keep_alive:
                parts.append(b"connection: close\r\n")
        else:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def encode(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        head_only: bool = False,
    ) -> bytes:
        """The whole response, for one write."""
        parts = [_status_line(status), self._clock.header()]
        for key, value in headers:
            parts += [key, b": ", value, b"\r\n"]
        parts.append(b"content-length: %d\r\n" % len(body))
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head_only:
            parts.append(body)
        return b"".join(parts)

    async def respond(
        self, request: _Request, conn: _Connection, stream: _StreamedAnswer
    ) -> Answer:
        """Any route but inference, through the framework app. A streamed answer is
        written by ``stream`` as it comes (what is returned is then not used)."""
        try:
            return await self._asgi(request, conn, stream)
        except Exception:
            if not stream.started:
                log.exception("unexpected error in %s %s", request.method, request.path)
            elif not stream.complete:
                log.warning("%s %s: stream broken off", request.method, request.path)
            return internal_error()

    async def _asgi(self, request: _Request, conn: _Connection, stream: _StreamedAnswer) -> Answer:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": "http",
            "path": request.path,
            "raw_path": request.path.encode("latin-1"),
            "query_string": request.query,
            "root_path": "",
            "headers": request.headers,
            "client": conn.client,
            "server": self._address,
        }
        received = False

        async def receive() -> dict[str, Any]:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            # Nothing more arrives; a disconnect cancels the whole task instead.
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable")

        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                given = message.get("headers", ())
                headers = [(k.lower(), v) for k, v in given if k.lower() not in _FRAMING]
            elif message["type"] == "http.response.body":
                body = bytes(message.get("body", b""))
                more = bool(message.get("more_body", False))
                if stream.started:
                    await stream.body(body, more)
                elif more:  # a body in several messages: stream it
                    await stream.start(self.stream_head(status, headers, request))
                    await stream.body(b"".join(chunks) + body, more)
                    chunks.clear()
                else:
                    chunks.append(body)

        await self.app(scope, receive, send)
        if stream.started and not stream.complete:
            await stream.body(b"", False)  # the app ended without a last body message
        return status, b"".join(chunks), headers
