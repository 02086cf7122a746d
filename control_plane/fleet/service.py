"""The fleet plane of one control-plane replica: agent streams, health, snapshots.

:class:`FleetRuntime` is the core object: it owns the gRPC server for agents,
the :class:`HealthLedger` of the agents connected here, the relay of their
summaries, the merged :class:`FleetView`, the snapshot feed, the directive
board and the leadership campaign whose leader publishes snapshots and
reconciles directives. Every background task is started in :meth:`start`, kept,
and cancelled and awaited in :meth:`stop` in a fixed order.

Path of a report: agent → gRPC stream (any replica) → ledger (pure policy) →
relay → coordination key ``/meridian/fleet/regions/<region>/<replica>`` →
every replica's fleet view → (leader) snapshot publisher → coordination key
``/meridian/routing/snapshot`` → every replica's feed and every router's watch.
End users' API keys take the same way from the registry (leader) to
``/meridian/routing/api-keys``, published only when keys change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import orjson
from sqlalchemy.orm import Session, sessionmaker

from control_plane.autoscale.controller import Autoscaler, DeploymentTarget
from control_plane.autoscale.policy import AutoscalePolicy, ScalingConfig
from control_plane.fleet.leader import Leadership
from control_plane.fleet.store import FleetStore
from control_plane.fleet.tls import AgentTLS, bind_agent_ports, peer_check_for  # mutual TLS
from control_plane.health.directives import DirectiveBoard, DirectiveReconciler
from control_plane.health.fleet_view import FleetView
from control_plane.health.inventory import CredentialCheck, RegistryView
from control_plane.health.ledger import HealthLedger
from control_plane.health.policy import HealthConfig, HealthPolicy
from control_plane.health.recorder import (
    HealthRecorder,
    HealthRow,
    HealthSink,
    MemoryHealthSink,
    row_of,
)
from control_plane.health.relay import SummaryRelay
from control_plane.health.service import RegionServicer, add_region_service
from control_plane.health.snapshots import (
    KeyringFeed,
    KeyringPublisher,
    SnapshotFeed,
    SnapshotPublisher,
    build_snapshot,
)
from control_plane.health.summary import RegionSummary
from control_plane.rollouts.controller import RolloutController
from control_plane.rollouts.ops import RolloutOps
from control_plane.rollouts.window import RouterReport, parse_report
from meridian.coordination import Coordination, EventKind
from meridian.errors import Unavailable
from meridian.eventwait import wait_event
from meridian.snapshot import RoutingSnapshot

__all__ = [
    "FleetRuntime",
    "FleetSettings",
    "drain_action",
    "nudge_registry",
    "region_gpu_caps",
]

log = logging.getLogger(__name__)


def _default_replica() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class FleetSettings:
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 0  # 0: any free port (see FleetRuntime.grpc_port)
    replica_id: str = field(default_factory=_default_replica)
    report_interval_s: float = 1.0
    missed_heartbeats: int = 3
    tick_s: float = 0.05  # how often the heartbeat rule runs
    summary_ttl_s: float = 3.0  # a dead replica's summaries vanish after this
    leader_ttl_s: float = 2.0  # a dead leader is replaced after about this
    load_interval_s: float = 1.0  # load-only changes are relayed/published this often
    # a new leader (or one that regained the store) keeps silent regions' last states this
    # long, for their agents to reconnect (they retry at least every 5 s): None = the larger
    # of 6 s and 3 report intervals
    reconnect_grace_s: float | None = None
    # the leader republishes the snapshot (and the keyring, which may be large, less often)
    # at least this often, unchanged too: their generated_at tells routers how stale
    # what they hold is
    refresh_s: float = 5.0
    keyring_refresh_s: float = 60.0
    debounce_s: float = 0.05  # state changes are published within this
    registry_refresh_s: float = 2.0
    directive_config: dict[str, str] = field(default_factory=dict)
    grpc_max_message_bytes: int = 4 * 1024 * 1024
    namespace: str = "/meridian"  # root of every coordination key (one per fleet)
    health_flush_s: float = 5.0  # how often the leader persists changed region health
    # live streams of revoked credentials end at the next admin write's nudge, or within this
    credential_recheck_s: float = 30.0
    # elastic capacity: the leader's autoscaler sets every deployment's replicas
    autoscale: bool = True
    autoscale_interval_s: float = 1.0
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    gpu_budget: dict[str, int] = field(default_factory=dict)  # GPUs per type, all regions
    tls: AgentTLS | None = None  # mutual TLS for agents + enrollment port; None: plaintext
    rollout_interval_s: float = 0.5  # how often the leader moves rollouts along
    figures_ttl_s: float = 600.0  # a router's figures not renewed this long are dropped
    # routers whose figures came within this count as live (the snapshot's ``routers``),
    # recounted every routers_interval_s
    routers_live_s: float = 30.0
    routers_interval_s: float = 5.0

    def key(self, path: str) -> str:
        return f"{self.namespace.rstrip('/')}/{path}"

    @property
    def grace_s(self) -> float:
        if self.reconnect_grace_s is not None:
            return self.reconnect_grace_s
        return max(6.0, 3 * self.report_interval_s)

    def health_config(self) -> HealthConfig:
        return HealthConfig(
            report_interval_s=self.report_interval_s, missed_heartbeats=self.missed_heartbeats
        )


async def nudge_registry(coord: Coordination, namespace: str = "/meridian") -> None:
    """Tell the leader the registry changed (any admin write) so it reloads at once."""
    key = f"{namespace.rstrip('/')}/fleet/registry-changed"
    await coord.put(key, str(time.time()).encode())


class FleetRuntime:
    def __init__(
        self,
        settings: FleetSettings,
        coord: Coordination,
        *,
        load_registry: Callable[[], Awaitable[RegistryView]],
        check_credential: CredentialCheck,
        health_sink: HealthSink | None = None,
        set_draining: Callable[[str, bool, str], Awaitable[str]] | None = None,
        rollouts: RolloutOps | None = None,
    ) -> None:
        self.settings = settings
        self.coord = coord
        self._set_draining = set_draining
        self._load_registry = load_registry
        self.registry = RegistryView()
        self.policy = HealthPolicy(settings.health_config())
        self.relay = SummaryRelay(
            coord,
            replica=settings.replica_id,
            summary_of=lambda region: self.ledger.summary(region),
            lease_ttl_s=settings.summary_ttl_s,
            load_interval_s=settings.load_interval_s,
            prefix=settings.key("fleet/regions/"),
        )
        self.ledger = HealthLedger(
            self.policy, replica=settings.replica_id, on_change=self.relay.notify
        )
        self.publisher = SnapshotPublisher(
            coord,
            self._build,
            key=settings.key("routing/snapshot"),
            debounce_s=settings.debounce_s,
            load_interval_s=settings.load_interval_s,
            grace_s=settings.grace_s,
            refresh_s=settings.refresh_s,
        )
        self.fleet_view = FleetView(
            coord,
            on_change=self.publisher.mark,
            prefix=settings.key("fleet/regions/"),
            on_resync=self.publisher.hold,
        )
        self.feed = SnapshotFeed(coord, key=settings.key("routing/snapshot"))
        self.keyring = KeyringPublisher(
            coord, key=settings.key("routing/api-keys"), refresh_s=settings.keyring_refresh_s
        )
        self.keyring_feed = KeyringFeed(coord, key=settings.key("routing/api-keys"))
        self.board = DirectiveBoard(
            coord,
            report_interval_s=settings.report_interval_s,
            prefix=settings.key("fleet/directives/"),
        )
        self.reconciler = DirectiveReconciler(
            coord,
            report_interval_s=settings.report_interval_s,
            config=settings.directive_config,
            prefix=settings.key("fleet/directives/"),
        )
        self.servicer = RegionServicer(
            self.ledger, self.board, check_credential, peer_check=peer_check_for(settings.tls)
        )
        self.leadership = Leadership(
            coord,
            name="control-plane",
            identity=settings.replica_id.encode(),
            lead=self._lead,
            lease_ttl_s=settings.leader_ttl_s,
            root=settings.key("election"),
        )
        self.health_sink: HealthSink = health_sink or MemoryHealthSink()
        self.recorder = HealthRecorder(
            self._health_rows, self.health_sink, interval_s=settings.health_flush_s
        )
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._registry_changed = asyncio.Event()  # (leader) reload the registry now
        self._credentials_changed = asyncio.Event()  # re-check live agent streams now
        self.grpc_port = 0
        self.enroll_port = 0  # agents' enrollment port when settings.tls is set
        self._autoscale_wake = asyncio.Event()
        self.autoscaler: Autoscaler | None = None
        if settings.autoscale:
            self.autoscaler = Autoscaler(
                AutoscalePolicy(settings.scaling),
                gpu_budget=settings.gpu_budget,
                on_demand=self._autoscale_wake.set,
            )
        self.replicas: dict[tuple[str, str, str], int] = {}  # the autoscaler's last decisions
        # (leader) progressive rollouts, and the deployments routers mirror requests to
        self.mirrors: dict[tuple[str, str, str], tuple[float, str]] = {}
        self.routers = 0  # live router replicas, as their figures reports show
        self.rollouts: RolloutController | None = None
        if rollouts is not None:
            self.rollouts = RolloutController(
                rollouts,
                reports=self._figure_reports,
                snapshot=lambda: self.publisher.last_published,
                on_change=self._registry_changed.set,
                set_mirrors=self._set_mirrors,
                interval_s=settings.rollout_interval_s,
            )

    @classmethod
    def with_sql(
        cls,
        settings: FleetSettings,
        sessions: sessionmaker[Session],
        coord: Coordination,
        *,
        check_credential: CredentialCheck | None = None,
        health_sink: HealthSink | None = None,
    ) -> FleetRuntime:
        """The usual wiring: the registry read from (and drains written to) ``sessions``;
        agent credentials checked against the regions table unless ``check_credential``."""
        store = FleetStore(sessions)
        return cls(
            settings,
            coord,
            load_registry=store.load,
            check_credential=check_credential or store.check_credential,
            health_sink=health_sink,
            set_draining=drain_action(store.set_draining, coord, settings.namespace),
        )

    async def set_draining(self, region: str, draining: bool, actor: str) -> str:
        """Operator drain/undrain (``control_plane.api.fleet.fleet_router``'s ``set_draining``)."""
        if self._set_draining is None:
            raise Unavailable("draining is not configured for this runtime")
        return await self._set_draining(region, draining, actor)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        options = [
            ("grpc.max_receive_message_length", self.settings.grpc_max_message_bytes),
            ("grpc.keepalive_time_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        server = grpc.aio.server(options=options)
        add_region_service(self.servicer, server)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.grpc_port, self.enroll_port = bind_agent_ports(
            server, self.settings.tls, address, self.servicer.check_credential
        )
        if self.grpc_port == 0:
            raise RuntimeError(f"cannot listen for agents on {address}")
        self._server = server
        # followers of the coordination backend first, so the view is warm before leading
        self._spawn(self.fleet_view.run(), "fleet-view")
        self._spawn(self.feed.run(), "snapshot-feed")
        self._spawn(self.keyring_feed.run(), "keyring-feed")
        self._spawn(self.board.run(), "directive-board")
        self._spawn(self.relay.run(), "summary-relay")
        self._spawn(self._tick(), "heartbeat-tick")
        self._spawn(self._recheck_credentials(), "credential-recheck")
        self._spawn(self._watch_nudges(), "registry-nudges")
        self._spawn(self.leadership.run(), "leadership")
        await server.start()
        log.info(
            "replica %s: agents on %s:%d",
            self.settings.replica_id,
            self.settings.grpc_host,
            self.grpc_port,
        )

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop accepting agents, step down, withdraw summaries, stop following."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        for task in reversed(self._tasks):  # leadership first: it resigns on cancel
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.relay.close()

    # --- leader work -----------------------------------------------------------------------

    def _build(self, version: int) -> RoutingSnapshot:
        return build_snapshot(
            version,
            self.registry,
            self.fleet_view.summaries(),
            generated_at=time.time(),
            carried=self.publisher.grace.carried(time.monotonic()),
            mirrors=self.mirrors,
            routers=self.routers,
        )

    async def _lead(self) -> None:
        if not await wait_event(self.fleet_view.synced, 30):
            raise TimeoutError("the fleet view did not sync within 30 s")
        await self.keyring.new_term()
        self.reconciler.new_term()
        await self.refresh_registry()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.publisher.run(), name="snapshot-publisher")
            group.create_task(self._follow_registry(), name="registry-refresh")
            group.create_task(self.recorder.run(), name="health-recorder")
            if self.autoscaler is not None:
                group.create_task(self._autoscale(self.autoscaler), name="autoscaler")
                group.create_task(self._watch_demand(self.autoscaler), name="demand")
            if self.rollouts is not None:
                group.create_task(self.rollouts.run(), name="rollouts")
            group.create_task(self._count_routers(), name="router-count")

    def _health_rows(self) -> dict[str, HealthRow]:
        snapshot = self.publisher.last_published
        if snapshot is None:
            return {}
        return {
            r.name: row_of(r.name, self.fleet_view.summary(r.name), r.state)
            for r in snapshot.regions
        }

    async def refresh_registry(self) -> None:
        view = await self._load_registry()
        if view != self.registry:
            self.registry = view
            self.publisher.mark()
        await self.keyring.publish(view.api_keys)  # nothing when the keys did not change
        await self.reconciler.reconcile(view, self.replicas if self.autoscaler else None)

    async def note_demand(self, model: str, region: str | None) -> None:
        """A router holds a request for ``model`` (any replica): tell the leader's autoscaler."""
        value = orjson.dumps({"region": region, "at": time.time()})
        await self.coord.put(self.settings.key(f"fleet/demand/{model}"), value)

    async def note_figures(self, router: str, raw: bytes) -> None:
        """A router's figures (any replica): kept where the leader's rollouts read them."""
        await self.coord.put(self.settings.key(f"rollouts/figures/{router}"), raw)

    async def _figure_reports(self) -> list[RouterReport]:
        """Every router's latest figures; those of a router silent for longer than
        ``figures_ttl_s`` (gone, or renamed by a restart) are deleted."""
        found, _ = await self.coord.get_prefix(self.settings.key("rollouts/figures/"))
        now = time.time()
        reports = []
        for kv in found:
            report = parse_report(kv.value)
            if report is None or now - report.at > self.settings.figures_ttl_s:
                await self.coord.delete(kv.key)
                continue
            reports.append(report)
        return reports

    async def _count_routers(self) -> None:
        """Leader only: how many routers report (their figures, posted every second while
        they serve), published in the snapshot when it changes."""
        while True:
            try:
                reports = await self._figure_reports()
                now = time.time()
                live = sum(1 for r in reports if now - r.at <= self.settings.routers_live_s)
                if live != self.routers:
                    self.routers = live
                    self.publisher.mark()
            except Exception as exc:  # the backend is away: count again next time
                log.warning("counting the routers failed: %s", exc)
            await asyncio.sleep(self.settings.routers_interval_s)

    def _set_mirrors(self, mirrors: dict[tuple[str, str, str], tuple[float, str]]) -> None:
        if mirrors != self.mirrors:
            self.mirrors = mirrors
            self.publisher.mark()

    async def _watch_demand(self, autoscaler: Autoscaler) -> None:
        prefix = self.settings.key("fleet/demand/")
        while True:
            try:
                async with await self.coord.watch(prefix, prefix=True) as events:
                    async for event in events:
                        if event.kind != EventKind.PUT:
                            continue
                        with contextlib.suppress(ValueError, TypeError, AttributeError):
                            region = orjson.loads(event.value).get("region")
                            model = event.key[len(prefix) :]
                            autoscaler.note_demand(model, region, time.monotonic())
            except Exception as exc:
                log.warning("watching demand failed: %s", exc)
            await asyncio.sleep(0.5)

    async def _autoscale(self, autoscaler: Autoscaler) -> None:
        """Leader only: observe each snapshot, decide replicas, hand them to the directives."""
        while True:
            await wait_event(self._autoscale_wake, self.settings.autoscale_interval_s)
            self._autoscale_wake.clear()
            now = time.monotonic()
            snapshot = self.publisher.last_published
            if snapshot is not None:  # the latest state, sampled every period even if unchanged
                autoscaler.observe(snapshot, now)
            view = self.registry
            gpu_types = {r.name: r.gpu_type for r in view.regions}
            targets = [
                DeploymentTarget(
                    d.id, d.model, d.version, d.region, d.min_replicas, d.max_replicas,
                    gpu_types.get(d.region, ""), d.autoscale_pinned, d.pinned_replicas,
                )
                for d in view.deployments
            ]  # fmt: skip
            decided = autoscaler.decide(targets, now, region_gpu_caps(self.fleet_view.summaries()))
            replicas = {t.key: decided[t.id] for t in targets}
            if replicas != self.replicas:
                self.replicas = replicas
                try:
                    await self.reconciler.reconcile(view, replicas)
                except Exception as exc:
                    log.warning("storing the autoscaler's directives failed: %s", exc)

    async def _follow_registry(self) -> None:
        while True:
            await wait_event(self._registry_changed, self.settings.registry_refresh_s)
            self._registry_changed.clear()
            try:
                await self.refresh_registry()
            except Exception as exc:
                log.warning("reloading the registry failed: %s; keeping the last view", exc)

    # --- every replica ---------------------------------------------------------------------

    async def _watch_nudges(self) -> None:
        """An admin write happened (any replica): the leader reloads the registry, and
        every replica re-checks its agents' credentials (a rotated credential or a disabled
        region ends the stream at once rather than at the next periodic check)."""
        while True:
            try:
                nudges = self.settings.key("fleet/registry-changed")
                async with await self.coord.watch(nudges) as events:
                    async for event in events:
                        if event.kind == EventKind.PUT:
                            self._registry_changed.set()
                            self._credentials_changed.set()
            except Exception as exc:
                log.warning("watching registry nudges failed: %s", exc)
            await asyncio.sleep(0.5)

    async def _recheck_credentials(self) -> None:
        while True:
            await wait_event(self._credentials_changed, self.settings.credential_recheck_s)
            self._credentials_changed.clear()
            try:
                await self.servicer.revalidate()
            except Exception as exc:
                log.warning("re-checking agent credentials failed: %s", exc)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            self.ledger.tick()


def region_gpu_caps(summaries: Mapping[str, RegionSummary]) -> dict[str, int]:
    """GPUs each region can give replicas: its healthy GPUs, for regions whose agent
    reports GPUs at all (a region without GPU reports is not capped here)."""
    return {name: s.healthy_gpus for name, s in summaries.items() if s.gpus}


def drain_action(
    set_status: Callable[..., Awaitable[str]], coord: Coordination, namespace: str = "/meridian"
) -> Callable[[str, bool, str], Awaitable[str]]:
    """Drain/undrain through the registry (``FleetStore.set_draining``), then nudge the leader
    so the next snapshot reflects it within the debounce, not the registry refresh period."""

    async def set_draining(region: str, draining: bool, actor: str) -> str:
        status = await set_status(region, draining, actor=actor)
        await nudge_registry(coord, namespace)
        return status

    return set_draining
