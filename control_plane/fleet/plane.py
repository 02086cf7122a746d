"""The fleet plane inside the control-plane process: agents' gRPC, health, snapshots.

``build_fleet`` wires the health plane (``control_plane.fleet.service.FleetRuntime``) to the
registry's database and to the coordination backend the settings name, and gives
the REST routes (``/v1/routing/snapshot``, region health, drain) with the admin
API's own token scopes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Annotated, cast

import sqlalchemy as sa
from fastapi import APIRouter, Depends

from control_plane.api.deps import require_scope
from control_plane.api.errors import error_responses
from control_plane.api.fleet import fleet_router
from control_plane.autoscale.policy import ScalingConfig
from control_plane.console.hub import ConsoleHub
from control_plane.console.rollouts import RolloutBoard
from control_plane.console.state import fleet_state
from control_plane.console.traffic import TrafficBoard
from control_plane.db.models import RegionHealth
from control_plane.fleet.service import FleetRuntime, FleetSettings, drain_action, nudge_registry
from control_plane.fleet.store import FleetStore
from control_plane.fleet.tls import agent_tls_from  # mutual TLS for agents
from control_plane.health.recorder import SqlHealthSink
from control_plane.registry import Principal, Registry
from control_plane.schemas import TrafficAccepted, TrafficReportCreate
from control_plane.settings import ControlPlaneSettings
from meridian.coordination import Coordination, open_coordination
from meridian.errors import Unavailable

__all__ = ["FleetPlane", "build_fleet"]


@dataclass
class FleetPlane:
    runtime: FleetRuntime
    coord: Coordination
    routes: APIRouter
    console: ConsoleHub
    traffic: TrafficBoard

    async def start(self) -> None:
        await self.runtime.start()
        self.console.start()

    async def stop(self) -> None:
        await self.console.close()  # ends the consoles' event streams first
        await self.runtime.stop()
        await self.coord.close()

    async def nudge(self) -> None:
        """The registry changed: have the leader reload it now."""
        await nudge_registry(self.coord, self.runtime.settings.namespace)


def build_fleet(settings: ControlPlaneSettings, registry: Registry) -> FleetPlane:
    coord = open_coordination(settings.coordination_url)
    store = FleetStore(registry.db.writes, artifact_base_url=settings.resolved_public_url)
    fleet_settings = FleetSettings(
        grpc_host=settings.grpc_host,
        grpc_port=settings.grpc_port,
        report_interval_s=settings.report_interval_s,
        leader_ttl_s=settings.leader_ttl_s,
        summary_ttl_s=settings.summary_ttl_s,
        reconnect_grace_s=settings.reconnect_grace_s,
        refresh_s=settings.snapshot_refresh_s,
        namespace=settings.fleet_namespace,
        autoscale=settings.autoscale_enabled,
        scaling=ScalingConfig(
            target_concurrency=settings.autoscale_target_concurrency,
            stable_window_s=settings.autoscale_stable_window_s,
            panic_window_s=settings.autoscale_panic_window_s,
            scale_down_delay_s=settings.autoscale_scale_down_delay_s,
        ),
        gpu_budget=settings.gpu_budget,
        rollout_interval_s=settings.rollout_interval_s,
        tls=agent_tls_from(settings),  # mutual TLS for agents (control_plane.fleet.tls)
    )
    if settings.replica_id:
        fleet_settings = replace(fleet_settings, replica_id=settings.replica_id)
    runtime = FleetRuntime(
        fleet_settings,
        coord,
        load_registry=store.load,
        check_credential=store.check_credential,
        health_sink=SqlHealthSink(registry.db.engine, cast(sa.Table, RegionHealth.__table__)),
        rollouts=registry,
    )
    routes = fleet_router(
        runtime.feed,
        runtime.fleet_view,
        drain_action(store.set_draining, coord, settings.fleet_namespace),
        read_auth=require_scope("read"),
        admin_auth=require_scope("admin"),
        keyring=runtime.keyring_feed,
    )

    @routes.get("/v1/fleet/status", dependencies=[Depends(require_scope("read"))])
    async def status() -> dict[str, object]:
        """This replica: its id, whether it leads, its agents' port, the snapshot it serves."""
        return {
            "replica": runtime.settings.replica_id,
            "leader": runtime.leadership.is_leader,
            "grpc_port": runtime.grpc_port,
            "enroll_port": runtime.enroll_port,  # mutual TLS for agents
            "snapshot_version": runtime.feed.version,
            "agent_streams": runtime.servicer.streams,
        }

    traffic = TrafficBoard(coord, prefix=f"{settings.fleet_namespace.rstrip('/')}/fleet/traffic/")

    @routes.post(
        "/v1/traffic", status_code=202, tags=["fleet"], responses=error_responses(400, 503)
    )
    async def report_traffic(
        body: TrafficReportCreate, _: Annotated[Principal, Depends(require_scope("read"))]
    ) -> TrafficAccepted:
        """A router's requests per client area and region over its last interval (and its
        streams' time to first token per region), for the console's map; and the regions
        that entered or left brownout in its view, each written to the audit log. Routers
        send it with their read token."""
        try:
            await store.record_brownout(body.router, [t.model_dump() for t in body.brownout])
        except Exception as exc:
            reason = f"the registry database is unreachable: {exc}"
            raise Unavailable(reason, retry_after=1) from exc
        try:
            await traffic.put(body.router, body.model_dump())
        except Exception as exc:
            reason = f"the coordination store is unreachable: {exc}"
            raise Unavailable(reason, retry_after=1) from exc
        return TrafficAccepted(router=body.router, flows=len(body.flows))

    rollouts = RolloutBoard(registry.recent_rollouts)

    async def build_state() -> dict[str, object]:
        await traffic.refresh()
        autoscaler = runtime.autoscaler
        leader = runtime.leadership.is_leader
        return fleet_state(
            runtime.feed.current,
            runtime.fleet_view.summaries(),
            traffic.view,
            now=time.time(),
            desired=autoscaler.desired if autoscaler is not None and leader else None,
            replica=runtime.settings.replica_id,
            leader=leader,
            rollouts=await rollouts.refresh(),
        )

    async def snapshot_changed(timeout: float) -> bool:
        return await runtime.feed.wait_newer(runtime.feed.version, timeout)

    console = ConsoleHub(build_state, snapshot_changed)
    return FleetPlane(runtime, coord, routes, console, traffic)
