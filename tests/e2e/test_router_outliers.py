"""The router as its own process (``meridian router``) against stand-in workers: a region
whose worker answers 300 ms slow loses its traffic, and gets it back when quick again;
a region whose worker dies is ejected at once. Every wire has TLS from a fleet CA: the
router serves HTTPS and reaches the workers with its client certificate."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meridian.net import free_port
from meridian.pki import CertificateAuthority, Role
from meridian.pki.files import write_issued
from meridian.waiting import wait_until_async
from tests.router.conftest import StandInWorker, snapshot_for
from tests.router.test_gray_failure import PLACES, _load, _share
from worker.access import server_context

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RouterProcess:
    port: int
    workers: dict[str, StandInWorker]
    trust: ssl.SSLContext  # the fleet CA, which the router's certificate is from

    async def load(self, seconds: float, rate: float) -> list[tuple[float, str, int, int]]:
        return await _load(self.port, seconds, rate, verify=self.trust)

    async def metrics(self) -> str:
        async with httpx.AsyncClient(verify=self.trust) as client:
            return (await client.get(f"https://127.0.0.1:{self.port}/metrics")).text


@pytest.fixture
async def router_process(tmp_path: Path) -> AsyncIterator[RouterProcess]:
    ca = CertificateAuthority.create("outliers fleet CA")
    tls = tmp_path / "tls"
    router_files = write_issued(ca, Role.ROUTER, tls, name="router")
    workers = {}
    for name in PLACES:
        files = write_issued(ca, Role.WORKER, tls, name=f"worker-{name}", region=name)
        context = server_context(str(files.cert), str(files.key), str(files.ca))
        workers[name] = StandInWorker(name, tls=context)
    for w in workers.values():
        await w.start()
    snapshot = tmp_path / "snapshot.json"
    places = {name: (workers[name], lat, lon) for name, (lat, lon) in PLACES.items()}
    snapshot.write_bytes(snapshot_for(places).to_json())
    port = free_port()
    cert, key, ca_file = str(router_files.cert), str(router_files.key), str(router_files.ca)
    argv = [sys.executable, "-m", "meridian", "router", "--port", str(port),
            "--snapshot-path", str(snapshot), "--tls-cert", cert, "--tls-key", key,
            "--fleet-ca", ca_file, "--worker-cert", cert, "--worker-key", key]  # fmt: skip
    trust = ssl.create_default_context(cafile=ca_file)
    log = (tmp_path / "router.log").open("wb")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MERIDIAN_ROUTER_BREAKER_COOLDOWN_S": "0.3"}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=log, stderr=asyncio.subprocess.STDOUT, env=env
    )

    async def ready() -> bool:
        try:
            async with httpx.AsyncClient(verify=trust) as client:
                r = await client.get(f"https://127.0.0.1:{port}/v2/health/ready", timeout=0.5)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    try:
        await wait_until_async(ready, timeout=30, what="the router process serves")
        yield RouterProcess(port, workers, trust)
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.close()
        for w in workers.values():
            if w.server is not None:
                await w.stop()


async def test_a_slow_region_loses_its_traffic_to_a_router_process(router_process) -> None:
    router = router_process
    before = await router.load(1.0, rate=40)
    assert _share(before, "eu", 0.2, 1.0) == 1.0
    router.workers["eu"].delay_s = 0.3
    slow = await router.load(5.0, rate=40)
    assert all(status == 200 for _, _, status, _ in slow)
    assert _share(slow, "eu", 1.0, 5.0) <= 0.2  # fallen by 80% and more within 5 s
    metrics = await router.metrics()
    wait = next(
        float(line.split()[1]) for line in metrics.splitlines()
        if line.startswith('meridian_router_region_wait_ms{region="eu"}')
    )  # fmt: skip
    assert wait > 100.0  # the observed wait, no longer 0
    router.workers["eu"].delay_s = 0.0
    started = time.monotonic()
    back = await router.load(4.0, rate=40)
    assert _share(back, "eu", 3.0, 4.0) >= 0.9
    assert time.monotonic() - started < 10.0


async def test_a_dead_region_costs_no_request_after_its_first_refusals(router_process) -> None:
    router = router_process
    await router.workers["eu"].stop()
    results = await router.load(2.0, rate=40)
    assert all(status == 200 for _, _, status, _ in results)
    retried = [t for t, _, _, attempts in results if attempts > 1]
    assert retried and max(retried) < 1.0
    assert 'meridian_router_workers_ejected{region="eu"} 1.0' in await router.metrics()
