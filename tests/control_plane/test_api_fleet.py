"""The fleet REST routes over a real runtime (in-process coordination, SQLite registry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Header, HTTPException
from sqlalchemy.orm import Session, sessionmaker

from control_plane.api.fleet import fleet_router
from control_plane.db.models import AuditEntry, Region
from control_plane.fleet.service import FleetRuntime
from meridian.coordination import InProcessCoordination
from meridian.snapshot import HealthState, RoutingSnapshot
from meridian.waiting import wait_until_async
from tests.fleet_support import (
    fast_settings,
    make_registry,
    running_fleet,
    start_agent,
    wait_snapshot,
)

ADMIN = {"Authorization": "Bearer admin-secret"}


def read_auth() -> None:
    return None


def admin_auth(authorization: Annotated[str | None, Header()] = None) -> str:
    if authorization != ADMIN["Authorization"]:
        raise HTTPException(401, "admin token required")
    return "alice"


class Env:
    def __init__(
        self, runtime: FleetRuntime, client: httpx.AsyncClient, sessions: sessionmaker[Session]
    ) -> None:
        self.runtime = runtime
        self.client = client
        self.sessions = sessions


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    sessions = make_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    coord = InProcessCoordination()
    try:
        async with running_fleet(sessions, coord, fast_settings()) as runtime:
            await wait_until_async(
                lambda: runtime.feed.current is not None, timeout=5, what="first snapshot"
            )
            app = FastAPI()
            app.include_router(
                fleet_router(
                    runtime.feed,
                    runtime.fleet_view,
                    runtime.set_draining,
                    read_auth=read_auth,
                    admin_auth=admin_auth,
                    max_wait_s=10,
                )
            )
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://fleet") as client:
                yield Env(runtime, client, sessions)
    finally:
        await coord.close()


async def test_snapshot_etag_and_long_poll(env: Env) -> None:
    first = await env.client.get("/v1/routing/snapshot")
    assert first.status_code == 200
    version = RoutingSnapshot.from_json(first.content).version
    assert first.headers["etag"] == f'"{version}"'

    # nothing changes: the long-poll answers 304 after about the wait
    start = time.monotonic()
    unchanged = await env.client.get(
        "/v1/routing/snapshot", params={"wait": 0.3}, headers={"If-None-Match": f'"{version}"'}
    )
    assert unchanged.status_code == 304
    assert 0.25 <= time.monotonic() - start < 2.0
    # without wait the answer is immediate
    assert (
        await env.client.get("/v1/routing/snapshot", headers={"If-None-Match": f'"{version}"'})
    ).status_code == 304

    # a change (an agent comes up) answers a waiting poll as soon as it is published
    poll = asyncio.create_task(
        env.client.get(
            "/v1/routing/snapshot", params={"wait": 8}, headers={"If-None-Match": f'"{version}"'}
        )
    )
    agent = start_agent([f"127.0.0.1:{env.runtime.grpc_port}"], "eu-west")
    try:
        response = await asyncio.wait_for(poll, 5)
        assert response.status_code == 200
        newer = RoutingSnapshot.from_json(response.content)
        assert newer.version > version
        assert response.headers["etag"] == f'"{newer.version}"'
    finally:
        await agent.stop()


async def test_snapshot_bad_input_is_a_clear_4xx(env: Env) -> None:
    bad_tag = await env.client.get("/v1/routing/snapshot", headers={"If-None-Match": "banana"})
    assert bad_tag.status_code == 400 and "If-None-Match" in bad_tag.json()["detail"]
    too_long = await env.client.get(
        "/v1/routing/snapshot", params={"wait": 999}, headers={"If-None-Match": '"1"'}
    )
    assert too_long.status_code == 422
    future = await env.client.get("/v1/routing/snapshot", headers={"If-None-Match": '"99999"'})
    assert future.status_code == 400


async def test_region_health_and_drain_undrain(env: Env) -> None:
    agent = start_agent([f"127.0.0.1:{env.runtime.grpc_port}"], "us-east")
    try:
        await wait_snapshot(
            lambda: env.runtime.feed.current,
            lambda s: s.region("us-east").state == HealthState.HEALTHY,  # type: ignore[union-attr]
            timeout=5,
        )
        health = (await env.client.get("/v1/regions/us-east/health")).json()
        assert health["state"] == "healthy" and health["routable"] is True
        assert health["agent_connected"] is True
        assert [g["condition"] for g in health["gpus"]] == ["ok"] * 4
        assert {w["worker_id"] for w in health["workers"]} == {"w0", "w1", "w2", "w3"}
        assert health["last_report_age_s"] < 2

        missing = await env.client.get("/v1/regions/atlantis/health")
        assert missing.status_code == 404 and "atlantis" in missing.json()["detail"]
        quiet = (await env.client.get("/v1/regions/ap-south/health")).json()
        assert quiet["state"] == "down" and quiet["reason"] == "no agent is connected"

        assert (await env.client.post("/v1/regions/us-east/drain")).status_code == 401
        start = time.monotonic()
        drained = await env.client.post("/v1/regions/us-east/drain", headers=ADMIN)
        assert drained.status_code == 200 and drained.json()["status"] == "draining"
        await wait_snapshot(
            lambda: env.runtime.feed.current,
            lambda s: s.region("us-east").state == HealthState.DRAINING,  # type: ignore[union-attr]
            timeout=3,
        )
        assert time.monotonic() - start < 1.5
        snap = env.runtime.feed.current
        assert snap is not None and "us-east" not in {r.name for r in snap.routable_regions()}

        undrained = await env.client.post("/v1/regions/us-east/undrain", headers=ADMIN)
        assert undrained.json()["status"] == "active"
        await wait_snapshot(
            lambda: env.runtime.feed.current,
            lambda s: s.region("us-east").state == HealthState.HEALTHY,  # type: ignore[union-attr]
            timeout=3,
        )
        with env.sessions() as s:
            status = s.scalar(sa.select(Region.status).where(Region.name == "us-east"))
            audit = s.scalars(sa.select(AuditEntry).order_by(AuditEntry.id)).all()
        assert status == "active"
        assert [(a.actor, a.action, a.entity_key) for a in audit] == [
            ("alice", "drain", "us-east"),
            ("alice", "undrain", "us-east"),
        ]
        unknown = await env.client.post("/v1/regions/atlantis/drain", headers=ADMIN)
        assert unknown.status_code == 404
        disabled = await env.client.post("/v1/regions/old-dc/drain", headers=ADMIN)
        assert disabled.status_code == 403
    finally:
        await agent.stop()


async def test_the_snapshot_counts_the_routers_that_report(tmp_path: Path) -> None:
    """Routers post their figures to any replica; the leader counts those heard from
    lately and publishes the count, so a router that has not measured its share of the
    traffic yet can assume an equal one."""
    sessions = make_registry(f"sqlite:///{tmp_path / 'registry.db'}")
    coord = InProcessCoordination()
    settings = fast_settings(routers_interval_s=0.05, routers_live_s=30.0)
    try:
        async with running_fleet(sessions, coord, settings) as runtime:
            await wait_until_async(
                lambda: runtime.feed.current is not None, timeout=5, what="first snapshot"
            )
            assert runtime.feed.current is not None and runtime.feed.current.routers == 0
            for name, at in (("r1", time.time()), ("r2", time.time()), ("gone", 1.0)):
                body = {"router": name, "boot": "b", "figures": [], "at": at}
                await runtime.note_figures(name, orjson.dumps(body))
            await wait_until_async(
                lambda: runtime.feed.current is not None and runtime.feed.current.routers == 2,
                timeout=5,
                what="a snapshot counting the two live routers",
            )
            raw = runtime.feed.current.to_json()  # type: ignore[union-attr]
            assert RoutingSnapshot.from_json(raw).routers == 2
    finally:
        await coord.close()
