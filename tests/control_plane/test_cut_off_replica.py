"""A replica cut off from etcd, with a real process: a router long-polling it (over HTTPS)
sees its snapshot age grow instead of having it reset by every "nothing newer"."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meridian.net import free_port
from meridian.waiting import wait_until_async
from router.snapshot_store import HttpFollower, SnapshotStore
from tests.fleet_support import (
    REPLICA_AUTH,
    REPLICA_TOKEN,
    FleetTLS,
    make_registry,
    replica_command,
)

pytestmark = [pytest.mark.slow, pytest.mark.etcd, pytest.mark.postgres]
ROOT = Path(__file__).resolve().parents[2]


class Cable:
    """A TCP forwarder the test can cut: the replica reaches etcd only through it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe_both, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe_both(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self._writers.discard(writer)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def replica(
    postgres_url: str, etcd_endpoint: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Cable, ssl.SSLContext]]:
    make_registry(postgres_url).kw["bind"].dispose()
    host, port = etcd_endpoint.rsplit(":", 1)
    cable = Cable((host, int(port)))
    await cable.start()
    http_port = free_port()
    tls = FleetTLS.create(tmp_path / "ca")
    argv, env = replica_command(
        postgres_url, f"127.0.0.1:{cable.port}", http_port=http_port, grpc_port=free_port(),
        data_dir=str(tmp_path / "replica"), tls=tls, enroll_port=free_port(),
        options=["--fleet-namespace", f"/test/cut-{uuid.uuid4().hex[:8]}"],
    )  # fmt: skip
    log = (tmp_path / "replica.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT,
        env=env,
    )  # fmt: skip
    try:
        yield f"https://127.0.0.1:{http_port}", cable, tls.trust()
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
        with contextlib.suppress(Exception):
            await cable.cut()


async def test_a_replica_cut_off_from_etcd_does_not_keep_the_snapshot_young(
    replica: tuple[str, Cable, ssl.SSLContext],
) -> None:
    url, cable, trust = replica
    store = SnapshotStore()
    follower = HttpFollower(  # long-polls of 1 s
        store, [url], REPLICA_TOKEN, wait_s=1.0, transport=httpx.AsyncHTTPTransport(verify=trust)
    )
    task = asyncio.create_task(follower.run())
    try:
        await wait_until_async(lambda: store.current is not None, timeout=30, what="a snapshot")
        age = store.confirmed_age()
        assert age is not None and age < 10.0  # the leader republishes every 5 s
        await cable.cut()  # the replica (the leader too) loses etcd
        # its answers to the router's long-polls no longer say "nothing newer"
        await wait_until_async(lambda: "503" in follower.last_error, timeout=15, what="503")
        # and the snapshot's age grows past the leader's refresh period and more
        await wait_until_async(
            lambda: (store.confirmed_age() or 0.0) > 12.0, timeout=20, what="the age grows"
        )
        held = store.current
        assert held is not None
        async with httpx.AsyncClient(verify=trust) as client:
            poll = {**REPLICA_AUTH, "if-none-match": f'"{held.version}"'}
            r = await client.get(f"{url}/v1/routing/snapshot", params={"wait": 0}, headers=poll)
        assert r.status_code == 503
        assert "cannot reach the coordination store" in r.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
