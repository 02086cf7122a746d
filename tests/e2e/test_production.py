"""Production mode end to end: two control-plane replicas on PostgreSQL + etcd, a router
following etcd and both replicas with its rate limits in Redis, two regions, every wire
encrypted with the fleet CA (a worker refuses a client without the router's certificate,
the control plane an agent with another region's).

With traffic flowing: kill the control-plane leader, restart PostgreSQL, kill a region.
After each, every request was answered and every acknowledged admin write is still there.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from meridian.waiting import wait_until
from tests import services
from tests.control_plane.test_agent_mtls import refusal
from tests.e2e.production import (
    SITES,
    TEXT,
    Production,
    credential_of,
    enrolled_agent,
    infer_body,
    production_fleet,
    reported_endpoints,
    steady,
    write_pair,
)
from tests.worker.text_model import reference
from worker.access import client_context

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    work = tmp_path_factory.mktemp("production")
    etcd, redis_url = services.require_etcd(), services.require_redis()
    with production_fleet(work, etcd=etcd, label="production", redis_url=redis_url) as prod:
        yield prod


def test_tritonclient_through_the_router(production: Production) -> None:
    import tritonclient.http as http

    assert production.fleet.ca_file is not None
    client = http.InferenceServerClient(
        f"127.0.0.1:{production.router_port}",
        ssl=True,
        ssl_options={"ca_certs": str(production.fleet.ca_file)},
    )
    inp = http.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXT.encode()], dtype=np.object_))
    out = client.infer("tiny", [inp], headers={"x-api-key": production.api_key}).as_numpy(
        "embedding"
    )
    np.testing.assert_allclose(out[0], reference(production.table, TEXT), rtol=1e-5, atol=1e-6)
    production.admin_write()


def test_every_wire_is_encrypted(production: Production) -> None:
    fleet = production.fleet
    assert production.router_url.startswith("https://")
    assert all(r.url.startswith("https://") for r in fleet.replicas)
    endpoints = [w["endpoint"] for r in fleet.snapshot()["regions"] for w in r["workers"]]
    assert endpoints and all(e.startswith("https://") for e in endpoints), endpoints
    plain = [f"http://127.0.0.1:{production.router_port}/v2/health/ready"]
    plain += [f"http://127.0.0.1:{r.http_port}/healthz" for r in fleet.replicas]
    for url in plain:
        with pytest.raises(httpx.TransportError):  # no plaintext answer on a TLS port
            httpx.get(url, timeout=3)
    warned = [c.name for c in fleet.live() if "PLAINTEXT" in c.log_path.read_text()]
    assert warned == [], f"these say a wire is plaintext: {warned}"


async def test_a_worker_answers_the_routers_certificate_only(
    production: Production, tmp_path: Path
) -> None:
    fleet = production.fleet
    assert fleet.router_files is not None and fleet.ca_file is not None
    worker = reported_endpoints(fleet, SITES[0].name)[0]
    url, body = f"{worker}/v2/models/tiny/infer", infer_body()
    # the fleet CA trusted, but no client certificate: the handshake refuses it
    async with httpx.AsyncClient(verify=fleet.verify, timeout=10) as anonymous:
        with pytest.raises(httpx.TransportError):
            await anonymous.post(url, json=body)
    # the region's agent certificate: a fleet certificate, not the router's
    agent = await enrolled_agent(fleet, SITES[0].name)
    agent_files = write_pair(tmp_path, "agent", agent.cert_pem, agent.key_pem)
    async with httpx.AsyncClient(verify=client_context(*agent_files, str(fleet.ca_file))) as c:
        refused = await c.post(url, json=body)
    assert refused.status_code == 403 and "router only" in refused.json()["error"]
    router = fleet.router_files
    async with httpx.AsyncClient(
        verify=client_context(str(router.cert), str(router.key), str(router.ca)), timeout=10
    ) as c:
        answered = await c.post(url, json=body)
    assert answered.status_code == 200, answered.text


async def test_an_agent_with_another_regions_certificate_is_refused(
    production: Production,
) -> None:
    fleet = production.fleet
    us, eu = SITES[0].name, SITES[1].name
    us_cert = await enrolled_agent(fleet, us)  # a genuine certificate, for us-east-1
    for replica in fleet.replicas:
        error = await refusal(
            replica.grpc_port, us_cert.channel_credentials(), eu, credential_of(fleet, eu)
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
        assert f"names region {us!r}, not {eu!r}" in (error.details() or "")
    # no client certificate at all: refused too, and the real agents stream on
    assert fleet.ca_file is not None
    anonymous = grpc.ssl_channel_credentials(fleet.ca_file.read_bytes())
    error = await refusal(fleet.grpc_port, anonymous, eu, credential_of(fleet, eu))
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED), error
    assert {us, eu} <= fleet.serving_regions()
    assert production.infer().status_code == 200


def test_killing_the_control_plane_leader(production: Production) -> None:
    wait_until(production.leader, timeout=15, what="a leader")
    leader = production.leader()
    victim = next(r for r in production.fleet.replicas if r.url == leader)
    survivor = next(r for r in production.fleet.replicas if r is not victim)
    killed: list[float] = []
    writes: list[bool] = []

    def kill() -> None:
        killed.append(time.monotonic())
        victim.child.kill_group()
        writes.append(production.try_admin_write())  # during the failover: acked or refused

    steady(production, kill, "killing the leader")
    wait_until(
        lambda: (production.status(survivor.url) or {}).get("leader") is True,
        timeout=15,
        what="the other replica takes over",
    )
    takeover = time.monotonic() - killed[0]
    production.admin_write()
    acked, present = production.writes_present()
    print(f"leader killed: takeover {takeover:.1f} s, writes acked {acked} present {present}")
    assert present == acked


def test_restarting_postgresql(production: Production) -> None:
    ctl = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if ctl is None or not versions:
        services.unavailable("pg_ctlcluster", "cannot restart PostgreSQL on this machine")

    def restart() -> None:
        subprocess.run(
            [ctl or "pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main",
             "restart"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        wait_until(
            lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0,
            timeout=60,
            what="PostgreSQL back",
        )

    steady(production, restart, "restarting PostgreSQL")

    def write_ok() -> bool:
        try:
            production.admin_write()
        except (RuntimeError, httpx.HTTPError):
            return False
        return True

    wait_until(write_ok, timeout=30, what="admin writes after the restart")
    assert set(production.models_written) <= production.models_present()


def test_killing_a_region(production: Production) -> None:
    agents = production.fleet.agents
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.monotonic())
        agents["us-east-1"].kill_group()

    traffic = steady(production, kill, "killing us-east-1")
    left = traffic.time_to_leave(killed[0], lambda a: a.region == "us-east-1" or a.attempts > 1)
    wait_until(
        lambda: "us-east-1" not in production.fleet.serving_regions(),
        timeout=15,
        what="us-east-1 leaves routing",
    )
    unrouted = time.monotonic() - killed[0]
    r = production.infer()
    assert r.status_code == 200 and r.headers["x-meridian-region"] == "eu-central-1"
    acked, present = production.writes_present()
    print(f"region killed: traffic left in {left:.2f} s, out of the snapshot in {unrouted:.1f} s,"
          f" failed 0 of {traffic.total()}, writes acked {acked} present {present}")  # fmt: skip
    assert left < 2.0, f"traffic still touched us-east-1 {left:.2f} s after its death"
    assert present == acked


def test_keys_issued_and_revoked_after_the_leader_changed(production: Production) -> None:
    # by now the first leader was killed: the keyring's versions continue on the new one
    admin = production.admin()
    try:
        key = admin.api_key("late-client", rate_per_s=100, burst=100)
        wait_until(lambda: production.infer(api_key=key).status_code == 200,
                   timeout=10, what="the new key accepted")  # fmt: skip
        admin.revoke_api_key("late-client")
        wait_until(lambda: production.infer(api_key=key).status_code == 401,
                   timeout=10, what="the revoked key refused")  # fmt: skip
    finally:
        admin.close()
    assert production.infer().status_code == 200
