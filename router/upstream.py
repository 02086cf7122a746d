"""Pooled HTTP/1.1 connections to workers.

Requests are buffered (bounded by the router's body limit) and passed through
byte for byte; binary tensor bodies are never decoded or re-encoded. A
connection that fails, times out or is told ``connection: close`` is dropped
from the pool.
"""

from __future__ import annotations

import asyncio
import math
import ssl
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = [
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamStream",
]


class UpstreamError(Exception):
    """The worker could not be reached or broke the connection (retryable)."""


class UpstreamConnectError(UpstreamError):
    """No connection could be made (refused, unreachable, connect timeout): the worker is
    not there, unlike a connection that broke mid-request."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Deadlines:
    """Fails requests in flight at their deadlines, with one timer for all of them.

    A timer per request (made, armed, cancelled and freed every time) costs a few
    microseconds; deadlines of requests sent later are nearly always later too, so the
    one timer, armed at the soonest deadline, is seldom moved and fires about once per
    timeout period while requests complete in time.
    """

    def __init__(self) -> None:
        self._in_flight: dict[_UpstreamConnection, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the timer's
        self._armed = math.inf

    def add(self, conn: _UpstreamConnection, deadline: float) -> None:
        self._in_flight[conn] = deadline
        if deadline < self._armed or conn.loop is not self._loop:
            self._arm(conn.loop, deadline)

    def discard(self, conn: _UpstreamConnection) -> None:
        self._in_flight.pop(conn, None)

    def _arm(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(deadline, self._fire, loop)
        self._loop = loop
        self._armed = deadline

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._armed = math.inf
        # timers have a resolution of a millisecond (uvloop's clock too); without this
        # slack a deadline a fraction of one away would rearm the timer for no time at all
        now = loop.time() + 0.001
        late = [conn for conn, deadline in self._in_flight.items() if deadline <= now]
        for conn in late:
            del self._in_flight[conn]
            conn.timed_out()
        if self._in_flight:
            self._arm(loop, min(self._in_flight.values()))


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: _Deadlines) -> None:
        # the loop is kept: asyncio.get_running_loop() costs a getpid() call on Python 3.11
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._deadlines = deadlines
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.reusable = True
        # streaming mode: the waiter resolves with the head, body pieces go to the queue
        # (``None`` at the end, an exception if the connection broke)
        self._queue: asyncio.Queue[bytes | Exception | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        self._fail(UpstreamError(f"worker closed the connection ({exc})"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.reusable = False
            self._fail(UpstreamError(f"malformed response from worker: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._queue is None:
            return
        self._deadlines.discard(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, b""))

    def on_body(self, body: bytes) -> None:
        if self._queue is not None:
            self._queue.put_nowait(body)
        else:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._deadlines.discard(self)
        if self._queue is not None:
            self._queue.put_nowait(None)
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, body))

    def send(
        self, payload: bytes, deadline: float, stream: bool = False
    ) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future fails with TimeoutError at ``deadline`` (loop time).
        With ``stream`` it resolves with the head alone and the body goes to ``queue``."""
        assert self.transport is not None
        self._queue = asyncio.Queue() if stream else None
        self._headers = []
        self._body = []
        self._waiter = self.loop.create_future()
        self._deadlines.add(self, deadline)
        self.transport.write(payload)
        return self._waiter

    def timed_out(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError())

    def _fail(self, exc: Exception) -> None:
        self._deadlines.discard(self)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        elif self._queue is not None:
            self._queue.put_nowait(exc)

    def close(self) -> None:
        self.reusable = False
        self._deadlines.discard(self)
        if self.transport is not None:
            self.transport.close()


class UpstreamStream:
    """A response whose body is read piece by piece as the worker sends it.

    ``close`` must be called (``chunks`` does it at the end): a stream read to its end
    returns its connection to the pool, one left early closes it, which tells the
    worker that the client has gone.
    """

    def __init__(
        self, pool: UpstreamPool, key: tuple[str, int], conn: _UpstreamConnection,
        head: UpstreamResponse,
    ) -> None:  # fmt: skip
        self.status = head.status
        self.headers = head.headers
        self._pool = pool
        self._key = key
        self._conn = conn
        self._done = False
        self._closed = False

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        """Body pieces as they arrive; UpstreamError if the worker breaks the connection,
        TimeoutError if it is silent for ``idle_timeout`` seconds."""
        queue = self._conn._queue
        assert queue is not None
        try:
            while True:
                if queue.empty():
                    async with asyncio.timeout(idle_timeout):
                        item = await queue.get()
                else:
                    item = queue.get_nowait()
                if item is None:
                    self._done = True
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.close()

    async def read(self, idle_timeout: float) -> bytes:
        return b"".join([piece async for piece in self.chunks(idle_timeout)])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        conn._queue = None
        if self._done and conn.reusable:
            self._pool._release(self._key, conn)
        else:
            conn.close()


class UpstreamPool:
    """Keep-alive connections per ``host:port``; at most ``max_idle`` kept idle per worker."""

    def __init__(
        self,
        max_idle: int = 64,
        connect_timeout: float = 1.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # TLS to workers with the router's fleet client certificate (router.tls.worker_context)
        self._ssl = ssl_context
        self._idle: dict[tuple[str, int], deque[_UpstreamConnection]] = defaultdict(deque)
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout
        self._host_lines: dict[tuple[str, int], bytes] = {}
        self._deadlines = _Deadlines()
        self._connect_ms: dict[tuple[str, int], float] = {}

    def network_ms(self, host: str, port: int) -> float:
        """The quickest TCP connect seen to ``host:port`` (ms): one network round trip,
        which a slow worker process cannot inflate (the kernel answers the handshake)."""
        return self._connect_ms.get((host, port), 0.0)

    async def _connect(self, host: str, port: int) -> _UpstreamConnection:
        loop = asyncio.get_running_loop()
        deadlines = self._deadlines
        started = loop.time()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _UpstreamConnection(loop, deadlines), host, port, ssl=self._ssl,
                    server_hostname=host if self._ssl is not None else None,
                )  # fmt: skip
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamConnectError(f"cannot connect to worker {host}:{port}: {exc!r}") from exc
        took = (loop.time() - started) * 1000.0
        key = (host, port)
        self._connect_ms[key] = min(took, self._connect_ms.get(key, took))
        return conn

    def _take_idle(self, key: tuple[str, int]) -> _UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def _payload(
        self, key: tuple[str, int], method: str, target: str,
        headers: list[tuple[bytes, bytes]], body: bytes,
    ) -> bytes:  # fmt: skip
        host_line = self._host_lines.get(key)
        if host_line is None:
            host_line = self._host_lines[key] = f"host: {key[0]}:{key[1]}\r\n".encode()
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), host_line]
        for k, v in headers:
            head += (k, b": ", v, b"\r\n")
        head += (b"content-length: %d\r\n\r\n" % len(body), body)
        return b"".join(head)

    def _release(self, key: tuple[str, int], conn: _UpstreamConnection) -> None:
        idle = self._idle[key]
        if conn.reusable and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()

    async def stream(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> UpstreamStream:
        """Send one request and return once the response's head has come (within
        ``timeout``); its body is read from the returned stream."""
        key = (host, port)
        payload = self._payload(key, method, target, headers, body)
        reused = True
        conn = self._take_idle(key)
        if conn is None:
            reused = False
            conn = await self._connect(host, port)
        deadline = conn.loop.time() + timeout
        try:
            try:
                head = await conn.send(payload, deadline, stream=True)
            except UpstreamError:
                if not reused:
                    raise
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(host, port)
                head = await conn.send(payload, deadline, stream=True)
        except BaseException:
            conn.close()
            raise
        return UpstreamStream(self, key, conn, head)

    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,
    ) -> UpstreamResponse:
        """Send one request and return the whole response; raises UpstreamError or TimeoutError."""
        key = (host, port)
        host_line = self._host_lines.get(key)
        if host_line is None:
            host_line = self._host_lines[key] = f"host: {host}:{port}\r\n".encode()
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), host_line]
        for k, v in headers:
            head += (k, b": ", v, b"\r\n")
        head += (b"content-length: %d\r\n\r\n" % len(body), body)
        payload = b"".join(head)
        reused = True
        conn = self._take_idle(key)
        if conn is None:
            reused = False
            conn = await self._connect(host, port)
        deadline = conn.loop.time() + timeout
        try:
            try:
                response = await conn.send(payload, deadline)
            except UpstreamError:
                if not reused:
                    raise
                # a pooled connection the worker had already closed: retry once on a new one
                async with asyncio.timeout_at(deadline):
                    conn = await self._connect(host, port)
                response = await conn.send(payload, deadline)
        except BaseException:
            conn.close()
            raise
        idle = self._idle[key]
        if conn.reusable and len(idle) < self._max_idle:
            idle.append(conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
