"""Pooled HTTP/1.1 connections to workers.

Requests are buffered (bounded by the router's body limit) and passed through
byte for byte; binary tensor bodies are never decoded or re-encoded. A
connection that fails, times out or is told ``connection: close`` is dropped
from the pool.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import cast

import httptools

__all__ = ["UpstreamError", "UpstreamPool", "UpstreamResponse"]


class UpstreamError(Exception):
    """The worker could not be reached or broke the connection (retryable)."""


@dataclass(slots=True)
class UpstreamResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _UpstreamConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self.reusable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(UpstreamError(f"worker closed the connection ({exc})"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.reusable = False
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(UpstreamError(f"malformed response from worker: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if not self._parser.should_keep_alive():
            self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = b"".join(self._body)
            waiter.set_result(UpstreamResponse(self._parser.get_status_code(), self._headers, body))

    def send(self, payload: bytes) -> asyncio.Future[UpstreamResponse]:
        assert self.transport is not None
        self._headers = []
        self._body = []
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self._waiter

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Keep-alive connections per ``host:port``; at most ``max_idle`` kept idle per worker."""

    def __init__(self, max_idle: int = 64, connect_timeout: float = 1.0) -> None:
        self._idle: dict[tuple[str, int], deque[_UpstreamConnection]] = defaultdict(deque)
        self._max_idle = max_idle
        self._connect_timeout = connect_timeout

    async def _connect(self, host: str, port: int) -> _UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(_UpstreamConnection, host, port)
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(f"cannot connect to worker {host}:{port}: {exc!r}") from exc
        return conn

    def _take_idle(self, key: tuple[str, int]) -> _UpstreamConnection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

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
        head = [f"{method} {target} HTTP/1.1\r\nhost: {host}:{port}\r\n".encode()]
        for k, v in headers:
            head += [k, b": ", v, b"\r\n"]
        head.append(b"content-length: %d\r\n\r\n" % len(body))
        payload = b"".join(head) + body
        reused = True
        conn = self._take_idle(key)
        if conn is None:
            reused = False
            conn = await self._connect(host, port)
        try:
            async with asyncio.timeout(timeout):
                try:
                    response = await conn.send(payload)
                except UpstreamError:
                    if not reused:
                        raise
                    # a pooled connection the worker had already closed: retry once on a new one
                    conn = await self._connect(host, port)
                    response = await conn.send(payload)
        except BaseException:
            conn.close()
            raise
        if conn.reusable and len(self._idle[key]) < self._max_idle:
            self._idle[key].append(conn)
        else:
            conn.close()
        return response

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
