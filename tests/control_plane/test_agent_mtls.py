"""Agents enroll with their credential, then stream over mutual TLS naming their region."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.models import Region
from control_plane.fleet.service import FleetRuntime, nudge_registry
from control_plane.fleet.store import credential_hash
from control_plane.fleet.tls import AgentTLS as ServerTLS
from meridian.coordination import InProcessCoordination
from meridian.pki import CertificateAuthority, Role, identity_of_pem
from meridian.snapshot import HealthState
from meridian.waiting import wait_until_async
from proto import enroll_pb2 as epb
from proto import region_pb2 as pb
from proto import region_pb2_grpc as pb_grpc
from region_agent.agent import RegionAgent
from region_agent.gpus import SimulatedGpuSource
from region_agent.tls import ENROLL_METHOD, AgentCertificate, AgentTLS
from tests.fleet_support import (
    REGIONS,
    RunningAgent,
    StaticSupervisor,
    fast_settings,
    make_registry,
    running_fleet,
    wait_snapshot,
)


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    return make_registry(f"sqlite:///{tmp_path / 'registry.db'}")


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test fleet CA")


async def _fleet(
    sessions: sessionmaker[Session], ca: CertificateAuthority, lifetime_s: float = 3600
) -> AsyncIterator[FleetRuntime]:
    coord = InProcessCoordination()
    tls = ServerTLS(ca, agent_cert_lifetime=dt.timedelta(seconds=lifetime_s))
    try:
        async with running_fleet(sessions, coord, fast_settings(tls=tls)) as runtime:
            await wait_until_async(
                lambda: runtime.leadership.is_leader and runtime.feed.current is not None,
                timeout=5,
                what="leadership and a first snapshot",
            )
            yield runtime
    finally:
        await coord.close()


@pytest.fixture
async def fleet(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> AsyncIterator[FleetRuntime]:
    async for runtime in _fleet(sessions, ca):
        yield runtime


def agent_tls(fleet: FleetRuntime, ca: CertificateAuthority, renew_at: float = 2 / 3) -> AgentTLS:
    return AgentTLS(ca.cert_pem, [f"127.0.0.1:{fleet.enroll_port}"], renew_at=renew_at)


def start_tls_agent(
    fleet: FleetRuntime, ca: CertificateAuthority, region: str, renew_at: float = 2 / 3
) -> RunningAgent:
    source = SimulatedGpuSource(2, "H100", seed=1)
    supervisor = StaticSupervisor(2)
    agent = RegionAgent(
        [f"127.0.0.1:{fleet.grpc_port}"],
        region=region,
        credential=REGIONS[region][2],
        gpus=source,
        supervisor=supervisor,
        report_interval_s=0.2,
        backoff_base_s=0.05,
        backoff_cap_s=0.5,
        tls=agent_tls(fleet, ca, renew_at),
    )
    return RunningAgent(agent, source, supervisor, asyncio.create_task(agent.run()))


async def connect_once(
    port: int, creds: grpc.ChannelCredentials | None, region: str, credential: str
) -> grpc.aio.AioRpcError | None:
    """Register on a raw stream: None once welcomed with directives, else the error."""
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds)
    )
    async with channel:
        call = pb_grpc.RegionServiceStub(channel).Connect()
        register = pb.Register(region=region, credential=credential, agent_id="t")
        try:
            await call.write(pb.AgentMessage(register=register))
            async with asyncio.timeout(5):
                async for _ in call:
                    call.cancel()
                    return None
        except grpc.aio.AioRpcError as exc:
            return exc
    raise AssertionError("the stream ended without a status")


async def refusal(
    port: int, creds: grpc.ChannelCredentials | None, region: str, credential: str
) -> grpc.aio.AioRpcError:
    error = await connect_once(port, creds, region, credential)
    assert error is not None, "the stream was accepted"
    return error


async def test_agent_enrolls_then_streams_over_mutual_tls(
    fleet: FleetRuntime, ca: CertificateAuthority
) -> None:
    assert fleet.enroll_port and fleet.enroll_port != fleet.grpc_port
    agent = start_tls_agent(fleet, ca, "eu-west")
    try:
        await wait_snapshot(
            lambda: fleet.feed.current,
            lambda s: s.region("eu-west").state == HealthState.HEALTHY,  # type: ignore[union-attr]
            timeout=5,
        )
        cert = agent.agent.certificate
        assert cert is not None and cert.enrollments == 1
        peer = identity_of_pem(cert.cert_pem)
        assert (peer.role, peer.region) == ("agent", "eu-west")
        ca.verify(cert.cert_pem)
        assert fleet.servicer.streams == 1
    finally:
        await agent.stop()


async def test_agent_with_another_regions_certificate_is_refused(
    fleet: FleetRuntime, ca: CertificateAuthority
) -> None:
    us = AgentCertificate(agent_tls(fleet, ca), "us-east", REGIONS["us-east"][2])
    await us.enroll()  # a genuine certificate, for us-east
    error = await refusal(
        fleet.grpc_port, us.channel_credentials(), "eu-west", REGIONS["eu-west"][2]
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "names region 'us-east', not 'eu-west'" in (error.details() or "")
    # the same certificate with its own region is accepted (the refusal was the name)
    own = ("us-east", REGIONS["us-east"][2])
    assert await connect_once(fleet.grpc_port, us.channel_credentials(), *own) is None
    assert fleet.servicer.rejected == 1


async def test_streams_without_a_fleet_certificate_are_refused(
    fleet: FleetRuntime, ca: CertificateAuthority
) -> None:
    eu = ("eu-west", REGIONS["eu-west"][2])
    plaintext = await refusal(fleet.grpc_port, None, *eu)
    assert plaintext.code() == grpc.StatusCode.UNAVAILABLE  # no TLS: no connection at all
    server_only = grpc.ssl_channel_credentials(ca.cert_pem)
    no_cert = await refusal(fleet.grpc_port, server_only, *eu)
    assert no_cert.code() == grpc.StatusCode.UNAVAILABLE  # the handshake wants a certificate
    on_enroll_port = await refusal(fleet.enroll_port, server_only, *eu)
    assert on_enroll_port.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate" in (on_enroll_port.details() or "")
    foreign = CertificateAuthority.create("someone else").issue(Role.AGENT, region="eu-west")
    forged = grpc.ssl_channel_credentials(ca.cert_pem, foreign.key_pem, foreign.cert_pem)
    assert (await refusal(fleet.grpc_port, forged, *eu)).code() == (grpc.StatusCode.UNAVAILABLE)
    router = ca.issue(Role.ROUTER)  # the fleet's CA, but not an agent
    wrong_role = grpc.ssl_channel_credentials(ca.cert_pem, router.key_pem, router.cert_pem)
    refused = await refusal(fleet.grpc_port, wrong_role, *eu)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    assert fleet.servicer.streams == 0


async def test_enrollment_needs_the_region_credential(
    fleet: FleetRuntime, ca: CertificateAuthority
) -> None:
    async def enroll(region: str, credential: str, csr: bytes = b"") -> grpc.aio.AioRpcError:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{fleet.enroll_port}", grpc.ssl_channel_credentials(ca.cert_pem)
        ) as channel:
            call = channel.unary_unary(
                ENROLL_METHOD,
                request_serializer=epb.EnrollRequest.SerializeToString,
                response_deserializer=epb.EnrollReply.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(epb.EnrollRequest(region=region, credential=credential, csr_pem=csr))
            return info.value

    wrong = await enroll("eu-west", "not-the-credential")
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    disabled = await enroll("old-dc", REGIONS["old-dc"][2])
    assert disabled.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "disabled" in (disabled.details() or "")
    bad_csr = await enroll("eu-west", REGIONS["eu-west"][2], b"not a csr")
    assert bad_csr.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the enrollment port itself is TLS: a client trusting another CA cannot even talk to it
    other = CertificateAuthority.create("other")
    stranger = AgentCertificate(
        AgentTLS(other.cert_pem, [f"127.0.0.1:{fleet.enroll_port}"], timeout_s=2),
        "eu-west",
        REGIONS["eu-west"][2],
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stranger.enroll()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rotating_the_credential_ends_the_stream_and_refuses_the_old_certificate(
    fleet: FleetRuntime, ca: CertificateAuthority, sessions: sessionmaker[Session]
) -> None:
    agent = start_tls_agent(fleet, ca, "ap-south")
    try:
        await asyncio.wait_for(agent.agent.connected.wait(), 5)
        old = agent.agent.certificate
        assert old is not None
        with sessions.begin() as s:
            s.execute(
                sa.update(Region)
                .where(Region.name == "ap-south")
                .values(agent_credential_hash=credential_hash("rotated-ap-south"))
            )
        await nudge_registry(fleet.coord, fleet.settings.namespace)  # what the admin API does
        await wait_until_async(
            lambda: "UNAUTHENTICATED" in agent.agent.last_error, timeout=5, what="stream ended"
        )
        await wait_until_async(lambda: fleet.servicer.streams == 0, timeout=3, what="stream gone")
        # the old certificate, even with the new credential, is refused
        creds = old.channel_credentials()
        refused = await refusal(fleet.grpc_port, creds, "ap-south", "rotated-ap-south")
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "rotated" in (refused.details() or "")
    finally:
        await agent.stop()


@pytest.fixture
async def short_lived_fleet(
    sessions: sessionmaker[Session], ca: CertificateAuthority
) -> AsyncIterator[FleetRuntime]:
    async for runtime in _fleet(sessions, ca, lifetime_s=3):
        yield runtime


async def test_certificate_renews_before_expiry_without_dropping_the_stream(
    short_lived_fleet: FleetRuntime, ca: CertificateAuthority
) -> None:
    fleet = short_lived_fleet
    agent = start_tls_agent(fleet, ca, "eu-west", renew_at=0.5)
    try:
        await asyncio.wait_for(agent.agent.connected.wait(), 5)
        cert = agent.agent.certificate
        assert cert is not None and cert.not_after is not None
        first_expiry = cert.not_after
        await wait_until_async(
            lambda: dt.datetime.now(dt.UTC) > first_expiry + dt.timedelta(seconds=0.5),
            timeout=6,
            what="the first certificate's expiry",
        )
        assert cert.enrollments >= 2 and cert.not_after > first_expiry
        ca.verify(cert.cert_pem)  # the one held now is valid
        assert agent.agent.sessions == 1 and agent.agent.connected.is_set()
        assert fleet.servicer.streams == 1 and fleet.servicer.rejected == 0
    finally:
        await agent.stop()


async def test_agent_gets_its_workers_certificates_and_scrapes_them_over_tls(
    fleet: FleetRuntime, ca: CertificateAuthority, tmp_path: Path
) -> None:
    import httpx

    from tests.worker.inprocess import live_worker
    from worker.dataplane import DataPlane
    from worker.settings import WorkerSettings

    cert = AgentCertificate(agent_tls(fleet, ca), "eu-west", REGIONS["eu-west"][2])
    await cert.enroll()
    files = await cert.issue_worker_files(tmp_path / "tls", ["127.0.0.1"])
    worker = identity_of_pem(files.cert.read_bytes())
    assert (worker.role, worker.region) == ("worker", "eu-west")
    ca.verify(files.cert.read_bytes())
    assert files.key.stat().st_mode & 0o777 == 0o600
    assert files.agent_key.stat().st_mode & 0o777 == 0o600
    env = files.worker_env()
    settings = WorkerSettings(
        cache_dir=tmp_path / "cache",
        tls_cert=Path(env["MERIDIAN_WORKER_TLS_CERT"]),
        tls_key=Path(env["MERIDIAN_WORKER_TLS_KEY"]),
        tls_ca=Path(env["MERIDIAN_WORKER_TLS_CA"]),
    )
    async with live_worker(settings, DataPlane(settings)) as w:
        url = w.url.replace("http://", "https://")
        async with httpx.AsyncClient(base_url=url, verify=files.scrape_context()) as agent:
            assert (await agent.get("/v2/stats")).status_code == 200  # the agent's scrape
            assert (await agent.post("/v2/models/x/infer", json={})).status_code == 403
    # only agent and worker certificates are handed out, for a few hosts
    for role, hosts in (("router", ["127.0.0.1"]), ("worker", []), ("worker", ["h"] * 9)):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await cert._request(role, hosts)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
