"""The worker's own HTTP/1.1 server, spoken to over raw sockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from meridian.waiting import wait_until_async
from tests.worker.inprocess import GateEngine, LiveWorker, live_worker
from worker.app import create_app
from worker.dataplane import DataPlane
from worker.http_server import HttpServer
from worker.settings import WorkerSettings


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[LiveWorker]:
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0, max_request_bytes=4096)
    dp = DataPlane(settings)
    await dp.install_engine("gate", "1", GateEngine(width=4))
    async with live_worker(settings, dp) as w:
        yield w


def _infer_request(value: float, extra: bytes = b"") -> bytes:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [value] * 4}]}
    )
    return (
        b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head[:-4].split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, headers, body


async def _connect(worker: LiveWorker) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(worker.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def test_pipelined_requests_are_answered_in_order(worker: LiveWorker) -> None:
    reader, writer = await _connect(worker)
    writer.write(
        _infer_request(1)
        + b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n"
        + _infer_request(3)
        + b"GET /v2/models/nothing HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    answers = [await _read_response(reader) for _ in range(4)]
    writer.close()
    assert [a[0] for a in answers] == [200, 200, 200, 404]
    assert orjson.loads(answers[0][2])["outputs"][0]["data"] == [2.0] * 4
    assert orjson.loads(answers[1][2]) == {"live": True}
    assert orjson.loads(answers[2][2])["outputs"][0]["data"] == [6.0] * 4
    assert orjson.loads(answers[3][2])["code"] == "not_found"
    assert all(b"date" in a[1] for a in answers)


async def test_chunked_body_and_expect_continue(worker: LiveWorker) -> None:
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    )
    reader, writer = await _connect(worker)
    writer.write(
        b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert interim.startswith(b"HTTP/1.1 100 ")
    half = len(body) // 2
    for part in (body[:half], body[half:]):
        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
    writer.write(b"0\r\n\r\n")
    status, headers, answer = await _read_response(reader)
    writer.close()
    assert status == 200 and headers[b"content-type"] == b"application/json"
    out = orjson.loads(answer)["outputs"][0]
    np.testing.assert_allclose(out["data"], [2, 4, 6, 8])


async def test_bodies_past_the_limit_are_413_and_close(worker: LiveWorker) -> None:
    declared = (
        b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n"
        + b"x" * 5000
    )
    chunk = b"x" * 3000
    chunked = (
        b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2
        + b"0\r\n\r\n"
    )
    for request in (declared, chunked):
        reader, writer = await _connect(worker)
        writer.write(request)
        status, headers, body = await _read_response(reader)
        assert status == 413 and headers[b"connection"] == b"close"
        assert orjson.loads(body)["code"] == "payload_too_large"
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server
        writer.close()


async def test_too_many_headers_are_431_and_close(worker: LiveWorker) -> None:
    reader, writer = await _connect(worker)
    many = b"".join(b"X-Filler-%d: y\r\n" % i for i in range(120))
    writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + many + b"\r\n")
    status, headers, body = await _read_response(reader)
    assert status == 431 and headers[b"connection"] == b"close"
    assert orjson.loads(body)["code"] == "headers_too_large"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_malformed_request_is_400_and_close(worker: LiveWorker) -> None:
    reader, writer = await _connect(worker)
    writer.write(b"NOT HTTP AT ALL\r\n\r\n")
    status, _, _ = await _read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_connection_close_is_honoured(worker: LiveWorker) -> None:
    reader, writer = await _connect(worker)
    writer.write(b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, _ = await _read_response(reader)
    assert status == 200 and headers[b"connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_stopping_finishes_requests_being_answered(tmp_path: Path) -> None:
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0)
    dp = DataPlane(settings)
    gate = GateEngine(width=4)
    gate.gate.clear()
    await dp.install_engine("gate", "1", gate)
    serving = live_worker(settings, dp)
    worker = await serving.__aenter__()
    reader, writer = await _connect(worker)
    writer.write(_infer_request(5))
    await wait_until_async(gate.running.is_set, timeout=10, what="engine busy")
    stopping = asyncio.create_task(serving.__aexit__(None, None, None))

    async def refused() -> bool:
        try:
            _, w = await _connect(worker)
        except OSError:
            return True
        w.close()
        return False

    await wait_until_async(refused, timeout=10, what="listener closed")
    gate.gate.set()
    status, _, body = await _read_response(reader)
    await stopping
    writer.close()
    assert status == 200 and orjson.loads(body)["outputs"][0]["data"] == [10.0] * 4


async def test_idle_keep_alive_connections_are_closed(tmp_path: Path) -> None:
    settings = WorkerSettings(cache_dir=tmp_path, max_queue_delay_ms=0, grpc_port=None)
    dp = DataPlane(settings)
    gate = GateEngine(width=4)
    await dp.install_engine("gate", "1", gate)
    app = create_app(settings, dataplane=dp)
    async with app.router.lifespan_context(app):
        server = HttpServer(app, dp, keep_alive_s=0.2)
        port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # A request that takes longer than the keep-alive time is still answered...
            gate.gate.clear()
            writer.write(_infer_request(2))
            await wait_until_async(gate.running.is_set, timeout=10, what="engine busy")
            await asyncio.sleep(0.5)  # longer than keep_alive_s, on purpose
            gate.gate.set()
            status, _, _ = await _read_response(reader)
            assert status == 200
            # ...and then the idle connection is closed.
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        finally:
            await server.stop()
