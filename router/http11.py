"""A small, fast HTTP/1.1 server on asyncio protocols and ``httptools``.

The router's hot path is a proxy: parse a request, pick an upstream, pass the
bytes through, write the answer back. A general ASGI stack costs several times
the work of that, so the router speaks HTTP/1.1 itself. It supports keep-alive,
``Content-Length`` and chunked request bodies (via the parser), a body size
limit, and answers in order on each connection (one task per connection takes
its requests from a list, woken by a bare future when the list was empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import socket
import ssl
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httptools

log = logging.getLogger(__name__)

__all__ = ["HttpServer", "Request", "Response", "StreamResponse", "start_server"]

REASONS = {
    200: "OK",
    204: "No Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

# "HTTP/1.1 200 OK\r\n" and so on, encoded once
STATUS_LINES = {code: f"HTTP/1.1 {code} {reason}\r\n".encode() for code, reason in REASONS.items()}

METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")}

# Hop-by-hop headers are never forwarded by a proxy (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    }
)


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[bytes, bytes]]  # names lower-cased
    body: bytes
    client_host: str

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encode(self, keep_alive: bool) -> bytes:
        head = STATUS_LINES.get(self.status)
        if head is None:
            head = f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}\r\n".encode()
        parts = [head]
        for k, v in self.headers:
            parts += (k, b": ", v, b"\r\n")
        parts.append(
            b"content-length: %d\r\n\r\n" % len(self.body)
            if keep_alive
            else b"content-length: %d\r\nconnection: close\r\n\r\n" % len(self.body)
        )
        parts.append(self.body)
        return b"".join(parts)


@dataclass(slots=True)
class StreamResponse:
    """An answer sent with chunked transfer coding, each piece of ``chunks`` written as
    it comes. If the connection is lost the writing task is cancelled, which closes
    ``chunks`` (an async generator's ``finally`` releases what it holds); if ``chunks``
    raises, the connection is closed without the last chunk, so the client sees a
    truncated answer rather than a complete wrong one."""

    status: int
    headers: list[tuple[bytes, bytes]]
    chunks: AsyncIterator[bytes]

    def head(self, keep_alive: bool) -> bytes:
        head = STATUS_LINES.get(self.status)
        if head is None:
            head = f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Unknown')}\r\n".encode()
        parts = [head]
        for k, v in self.headers:
            parts += (k, b": ", v, b"\r\n")
        parts.append(b"transfer-encoding: chunked\r\n")
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)


Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    # a TLS client that has not finished its handshake by then is dropped
    tls_handshake_timeout_s: float = 10.0


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them in order."""

    # made with the connection (``connection_made``): until then nothing refers back to the
    # object, so a TLS connection whose handshake fails is freed (HttpServer.handshaking)
    _parser: httptools.HttpRequestParser

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._limits = server.limits
        self._max_header_bytes = server.limits.max_header_bytes
        self._max_headers = server.limits.max_headers
        self._transport: asyncio.Transport | None = None
        self._client_host = ""
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._rejected: Response | None = None
        # requests not answered yet, oldest first; the task answering them, and the future
        # it waits on while there are none
        self._pending: deque[tuple[Request | Response, bool]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # set while writing is paused
        self._receiving = False  # part of a request has come, not all of it
        self._answering = False  # a request is being answered
        self.answered = 0  # requests answered on this connection

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._client_host = peer[0] if peer else ""
        self._parser = httptools.HttpRequestParser(self)
        self._server.handshaking.pop(self, None)
        self._server.connections.add(self)
        self._writer = asyncio.get_running_loop().create_task(self._answer_in_order())

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._writer is not None:
            self._writer.cancel()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"protocol upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}".encode())

    # --- httptools callbacks ----------------------------------------------------------------

    def _next_message(self) -> None:
        """Forget the request just parsed (no ``on_message_begin``: one callback less)."""
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._body = []
        self._body_len = 0
        self._rejected = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        headers = self._headers
        if self._header_bytes > self._max_header_bytes or len(headers) >= self._max_headers:
            self._rejected = self._rejected or _text(431, "request headers are too large")
            return
        headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._limits.max_body_bytes:
            limit = self._limits.max_body_bytes
            self._rejected = self._rejected or _text(
                413, f"request body exceeds the limit of {limit} bytes"
            )
            return
        if self._rejected is None:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._receiving = False
        keep_alive = self._parser.should_keep_alive()
        item: tuple[Request | Response, bool]
        if self._rejected is not None:
            item = (self._rejected, False)
        else:
            url = self._url
            if b"?" in url or b"#" in url or url[:1] != b"/":
                parsed = httptools.parse_url(url)
                path, query = parsed.path or b"/", parsed.query or b""
            else:  # origin form without a query: what parse_url would return
                path, query = url, b""
            body = self._body
            method = self._parser.get_method()
            request = Request(
                METHODS.get(method) or method.decode(),
                path.decode("latin-1"),
                query.decode("latin-1"),
                self._headers,
                body[0] if len(body) == 1 else b"".join(body),
                self._client_host,
            )
            item = (request, keep_alive)
        self._next_message()
        self._pending.append(item)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():  # cancelled with the connection
                wakeup.set_result(None)

    # --- answering --------------------------------------------------------------------------

    def _fail(self, status: int, message: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(Response(status, message).encode(keep_alive=False))
            self._transport.close()

    async def _answer_in_order(self) -> None:
        handler = self._server.handler
        pending = self._pending
        loop = asyncio.get_running_loop()
        while True:
            if not pending:
                self._answering = False
                if self._server.draining and self.idle:
                    self.close()  # idle between requests while the server drains
                    return
                self._wakeup = loop.create_future()
                await self._wakeup
            self._answering = True
            req, keep_alive = pending.popleft()
            if self._server.draining:
                keep_alive = False  # answer, then close: the server is going away
            response: Response | StreamResponse
            if isinstance(req, Response):
                response = req
            else:
                try:
                    response = await handler(req)
                except Exception:  # a bug in the handler must not kill the connection silently
                    self._server.errors += 1
                    log.exception("answering %s %s failed", req.method, req.path)
                    response = _text(500, "internal router error")
            transport = self._transport
            if transport is None or transport.is_closing():
                if isinstance(response, StreamResponse):
                    await _close_chunks(response.chunks)
                return
            if isinstance(response, StreamResponse):
                if not await self._stream(transport, response, keep_alive):
                    transport.close()
                    return
            else:
                transport.write(response.encode(keep_alive))
            self.answered += 1
            if not keep_alive:
                transport.close()
                return

    async def _stream(
        self, transport: asyncio.Transport, response: StreamResponse, keep_alive: bool
    ) -> bool:
        """Write a streamed answer; False when it broke off (the connection must close)."""
        transport.write(response.head(keep_alive))
        chunks = response.chunks
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                if self._writable is not None:
                    await self._writable
                if transport.is_closing():
                    return False
        except Exception:  # the source broke mid-answer: end it visibly truncated
            self._server.errors += 1
            return False
        finally:
            await _close_chunks(chunks)
        transport.write(b"0\r\n\r\n")
        return True

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def idle(self) -> bool:
        """Kept alive after an answer, waiting for the next request (a new connection is not
        idle: its first request is on the way)."""
        return bool(self.answered) and not (self._receiving or self._answering or self._pending)

    def close_if_idle(self) -> None:
        if self.idle:
            self.close()


async def _close_chunks(chunks: AsyncIterator[bytes]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _text(status: int, message: str) -> Response:
    return Response(status, message.encode(), [(b"content-type", b"text/plain; charset=utf-8")])


class HttpServer:
    """Owns the listening socket and its connections."""

    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        # accepted TLS connections whose handshake is in flight, with when each was accepted
        # (oldest first): asyncio makes a protocol's connection only once the handshake is
        # done, and says nothing of a handshake that failed (a load balancer's TCP check, a
        # port scan). Weak keys: such a connection leaves when it is freed; and any is
        # forgotten once its handshake must have ended, one way or the other
        self.handshaking: weakref.WeakKeyDictionary[_Connection, float] = (
            weakref.WeakKeyDictionary()
        )
        self.errors = 0
        self.draining = False
        self._server: asyncio.Server | None = None

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> int:
        """Listen on ``host:port`` (``SO_REUSEPORT``), or on ``sock``, a listening socket
        taken over from another process."""
        loop = asyncio.get_running_loop()
        factory = self._accept_tls if ssl_context is not None else lambda: _Connection(self)
        tls: dict[str, Any] = {}
        if ssl_context is not None:
            tls = {"ssl": ssl_context, "ssl_handshake_timeout": self.limits.tls_handshake_timeout_s}
        if sock is not None:
            self._server = await loop.create_server(factory, sock=sock, backlog=2048, **tls)
        else:
            self._server = await loop.create_server(
                factory, host, port, backlog=2048, reuse_address=True, reuse_port=True, **tls
            )
        return int(self.listener.getsockname()[1])

    def _accept_tls(self) -> _Connection:
        conn = _Connection(self)
        self._handshakes_in_flight()  # forgets the ended ones
        self.handshaking[conn] = asyncio.get_running_loop().time()
        return conn

    def _handshakes_in_flight(self) -> int:
        ended = asyncio.get_running_loop().time() - self.limits.tls_handshake_timeout_s - 1.0
        while self.handshaking:
            oldest, since = next(iter(self.handshaking.items()))
            if since > ended:
                break
            del self.handshaking[oldest]
        return len(self.handshaking)

    @property
    def listener(self) -> socket.socket:
        assert self._server is not None, "not started"
        return cast(socket.socket, self._server.sockets[0])

    async def drain(self, timeout_s: float) -> int:
        """Stop accepting, answer what was asked (each answer closing its connection), close
        idle connections; after ``timeout_s`` close the rest. A connection accepted with its
        TLS handshake still in flight is waited for too: its request is on the way. Returns
        how many were left."""
        self.draining = True
        if self._server is not None:
            self._server.close()  # the listening socket lives on in a successor, if any
        for conn in list(self.connections):
            conn.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        collected = -math.inf
        while (self.connections or self._handshakes_in_flight()) and loop.time() < deadline:
            if self.handshaking and loop.time() - collected >= 0.25:
                # a failed handshake's connection leaves once freed: at once under uvloop,
                # at a collection under asyncio's own loop (its TLS objects form a cycle)
                gc.collect()
                collected = loop.time()
                continue
            await asyncio.sleep(0.02)
            for conn in list(self.connections):
                conn.close_if_idle()
        left = len(self.connections) + self._handshakes_in_flight()
        await self.stop()
        return left

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self.connections):
                conn.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


async def start_server(
    handler: Handler, host: str, port: int, ssl_context: ssl.SSLContext | None = None
) -> tuple[HttpServer, int]:
    server = HttpServer(handler)
    bound = await server.start(host, port, ssl_context)
    return server, bound
