"""The router's HTTP/1.1 server and upstream pool on raw loopback sockets."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from meridian.waiting import wait_until_async
from router.http11 import HttpServer, Limits, Request, Response
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from router.tls import self_signed_pair, server_context
from router.upstream import UpstreamError, UpstreamPool
from tests.router.conftest import StandInWorker, snapshot_for

EDGE = "x-meridian-client-location"


async def _echo_path(req: Request) -> Response:
    # "/a" gives the loop a few turns before answering: were pipelined requests answered
    # as each finished rather than in order, the later ones would overtake it
    for _ in range(3 if req.path == "/a" else 0):
        await asyncio.sleep(0)
    return Response(200, req.path.encode() + b"?" + req.query.encode() + b"|" + req.body)


@pytest.fixture
async def echo() -> AsyncIterator[int]:
    server = HttpServer(_echo_path, Limits(max_body_bytes=16, max_headers=8))
    port = await server.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await server.stop()


async def _exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        async with asyncio.timeout(10):
            return await reader.read(-1)
    finally:
        writer.close()


async def test_pipelined_requests_are_answered_in_order(echo: int) -> None:
    raw = (
        b"POST /a?x=1 HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nA1"
        b"GET /b HTTP/1.1\r\nhost: t\r\n\r\n"
        b"POST /c HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n2\r\nC3\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
    )
    out = await _exchange(echo, raw)
    answers = out.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [a.rsplit(b"\r\n\r\n", 1)[1] for a in answers] == [
        b"/a?x=1|A1",
        b"/b?|",
        b"/c?|C3",
        b"/d?|",
    ]
    assert b"connection: close" not in answers[0]
    assert answers[-1].startswith(b"content-length: 4\r\nconnection: close\r\n\r\n")


async def test_keep_alive_connection_serves_many_requests(echo: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{echo}") as c:
        for i in range(20):
            r = await c.post(f"/p{i}", content=b"x")
            assert r.status_code == 200 and r.content == f"/p{i}?|x".encode()


async def test_malformed_and_oversized_requests_are_refused_and_closed(echo: int) -> None:
    out = await _exchange(echo, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in out
    big = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 17\r\n\r\n" + b"y" * 17
    out = await _exchange(echo, big)
    assert out.startswith(b"HTTP/1.1 413 Content Too Large\r\n") and b"connection: close" in out
    many = b"GET /x HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(9)) + b"\r\n"
    out = await _exchange(echo, many)
    assert out.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_handler_bug_answers_500_and_keeps_serving() -> None:
    async def handler(req: Request) -> Response:
        if req.path == "/bug":
            raise RuntimeError("bug")
        return Response(204)

    server = HttpServer(handler)
    port = await server.start("127.0.0.1", 0)
    try:
        raw = b"GET /bug HTTP/1.1\r\nhost: t\r\n\r\nGET /ok HTTP/1.1\r\nconnection: close\r\n\r\n"
        out = await _exchange(port, raw)
        assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert b"HTTP/1.1 204 No Content\r\n" in out
        assert server.errors == 1
    finally:
        await server.stop()


@pytest.fixture
async def tls_echo(tmp_path: Path) -> AsyncIterator[tuple[HttpServer, int, Path]]:
    """(server, port, its certificate): the echo server over TLS."""
    cert, key = self_signed_pair(tmp_path)
    server = HttpServer(_echo_path)
    port = await server.start("127.0.0.1", 0, server_context(cert, key))
    try:
        yield server, port, cert
    finally:
        await server.stop()


async def _accepted(
    server: HttpServer, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection the server has accepted, its TLS handshake not begun."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await wait_until_async(lambda: bool(server.handshaking), timeout=10, what="the accept")
    return reader, writer


async def test_a_drain_waits_for_a_connection_whose_tls_handshake_is_in_flight(
    tls_echo: tuple[HttpServer, int, Path],
) -> None:
    # asyncio hands a TLS connection to its protocol only after the handshake; a router that
    # drained without waiting for such a one would exit under a client it had accepted
    server, port, cert = tls_echo
    reader, writer = await _accepted(server, port)
    try:
        drain = asyncio.create_task(server.drain(timeout_s=10))
        await writer.start_tls(ssl.create_default_context(cafile=str(cert)))
        assert not drain.done()  # the handshake took many turns of the loop: still waiting
        writer.write(b"GET /late HTTP/1.1\r\nhost: t\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read(-1)
            left = await drain
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"/late?|" in answer
        assert b"connection: close" in answer.lower()  # answered, then closed: it is draining
        assert left == 0 and not server.handshaking
    finally:
        writer.close()


async def test_a_connection_that_never_starts_its_tls_handshake_does_not_hold_a_drain(
    tls_echo: tuple[HttpServer, int, Path],
) -> None:
    # a load balancer's TCP check or a port scan: connect, then close without a handshake
    server, port, _ = tls_echo
    _, writer = await _accepted(server, port)
    writer.close()
    await writer.wait_closed()
    # held as in flight, it would stay until its handshake's bound (60 s here) or the
    # drain's timeout (60 s); freed, it leaves within a collection or two
    server.limits = replace(server.limits, tls_handshake_timeout_s=60.0)
    started = asyncio.get_running_loop().time()
    left = await server.drain(timeout_s=60)
    assert left == 0 and not server.handshaking
    assert asyncio.get_running_loop().time() - started < 15.0  # neither bound


class _Hanging:
    """A worker that never answers; notes when its requests are abandoned."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def handle(self, req: Request) -> Response:
        self.started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Response(200)


async def test_upstream_timeout_raises_and_drops_the_connection() -> None:
    hanging = _Hanging()
    server = HttpServer(hanging.handle)
    port = await server.start("127.0.0.1", 0)
    pool = UpstreamPool()
    try:
        with pytest.raises(TimeoutError):
            await pool.request("127.0.0.1", port, "POST", "/x", [], b"{}", 0.05)
        # the connection was closed, so the worker's handler was cancelled
        await wait_until_async(lambda: hanging.cancelled == 1, timeout=5, what="cancelled")
        assert not any(pool._idle.values())
    finally:
        pool.close()
        await server.stop()


async def test_upstream_deadlines_each_hold_for_requests_in_flight_together() -> None:
    hanging, ok = _Hanging(), StandInWorker("ok")
    server = HttpServer(hanging.handle)
    port = await server.start("127.0.0.1", 0)
    await ok.start()
    pool = UpstreamPool()
    finished: list[str] = []

    async def call(name: str, port: int, timeout: float) -> None:
        try:
            await pool.request("127.0.0.1", port, "POST", "/x", [], b"{}", timeout)
            finished.append(name)
        except TimeoutError:
            finished.append(name + " timed out")

    try:
        long = asyncio.create_task(call("long", port, 0.4))
        await wait_until_async(lambda: hanging.started == 1, timeout=5, what="sent")
        short = asyncio.create_task(call("short", port, 0.05))  # sooner than the first
        answered = asyncio.create_task(call("answered", ok.port, 0.05))
        await asyncio.gather(long, short, answered)
        assert finished == ["answered", "short timed out", "long timed out"]
        await wait_until_async(lambda: hanging.cancelled == 2, timeout=5, what="cancelled")
    finally:
        pool.close()
        await ok.stop()
        await server.stop()


async def test_upstream_retries_once_when_a_pooled_connection_was_closed() -> None:
    served = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        # answer one request per connection, then close it on the next one unanswered
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            served += 1
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-n: %d\r\n\r\nok" % served)
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool()
    try:
        first = await pool.request("127.0.0.1", port, "POST", "/x", [], b"{}", 5.0)
        second = await pool.request("127.0.0.1", port, "POST", "/x", [], b"{}", 5.0)
        assert (first.status, first.body, second.status) == (200, b"ok", 200)
        assert dict(second.headers)[b"x-n"] == b"2"
    finally:
        pool.close()
        server.close()
        await server.wait_closed()


async def test_upstream_refused_connection_is_an_upstream_error() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError):
        await UpstreamPool().request("127.0.0.1", port, "GET", "/", [], b"", 1.0)


async def test_attempt_timeout_fails_over_to_the_next_region(tmp_path: Path) -> None:
    hanging, ok = _Hanging(), StandInWorker("far")
    slow = HttpServer(hanging.handle)
    slow_port = await slow.start("127.0.0.1", 0)
    await ok.start()
    near = StandInWorker("near")
    near.port = slow_port  # the snapshot names the hanging server as region "near"
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", attempt_timeout_s=0.1)
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (ok, 40.0, 40.0)}))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "11,11"})
        assert r.status_code == 200 and r.headers["x-meridian-region"] == "far"
        assert r.headers["x-meridian-attempts"] == "2"
        assert server.core.counters["upstream_failures"] == 1
    finally:
        await server.stop()
        await ok.stop()
        await slow.stop()


async def test_client_gone_abandons_the_upstream_request(tmp_path: Path) -> None:
    hanging = _Hanging()
    slow = HttpServer(hanging.handle)
    slow_port = await slow.start("127.0.0.1", 0)
    near = StandInWorker("near")
    near.port = slow_port
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json")
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0)}))
    port = await server.start()
    try:
        raw = b"POST /v2/models/mlp/infer HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\n{}"
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        await wait_until_async(lambda: hanging.started == 1, timeout=5, what="forwarded")
        assert sum(server.core.outstanding.values()) == 1
        writer.close()
        await wait_until_async(lambda: hanging.cancelled == 1, timeout=5, what="abandoned")
        assert sum(server.core.outstanding.values()) == 0
    finally:
        await server.stop()
        await slow.stop()


async def test_request_targets_are_split_into_path_and_query(echo: int) -> None:
    cases = {
        b"/a%20b": b"/a%20b?|",
        b"//x/y": b"//x/y?|",
        b"/m?k=v&w": b"/m?k=v&w|",
        b"/f#frag": b"/f?|",
        b"http://h:1/abs?q=1": b"/abs?q=1|",
    }
    for target, expected in cases.items():
        out = await _exchange(echo, b"GET " + target + b" HTTP/1.1\r\nconnection: close\r\n\r\n")
        assert out.endswith(b"\r\n\r\n" + expected), (target, out)
    out = await _exchange(echo, b"GET /a\xc3\xa9 HTTP/1.1\r\nconnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n")
