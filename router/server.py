"""The router process: the HTTPS endpoint, its snapshot followers and their shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from typing import Any

from meridian.coordination import Coordination
from router.core import RouterCore
from router.demand import DemandNotifier, HttpDemandSink
from router.figures import FigureReporter
from router.handoff import HandoffServer, take_listener
from router.http11 import HttpServer, Limits
from router.locate import ClientLocator
from router.policies import RoutingPolicy
from router.ratelimit import LocalRateLimiter, RateLimiter, RedisRateLimiter
from router.reports import ControlPlaneClient
from router.settings import RouterSettings
from router.snapshot_store import (
    CoordinationFollower,
    DocumentStore,
    HttpFollower,
    KeyringStore,
    SnapshotStore,
)
from router.tls import control_plane_transport, server_context, worker_context
from router.token_budget import LocalTokenBudget, RedisTokenBudget, TokenBudget
from router.traffic import HttpTrafficSink, TrafficReporter, default_router_id
from router.upstream import UpstreamPool

__all__ = ["RouterServer"]

log = logging.getLogger(__name__)


class RouterServer:
    """Builds the router from settings; ``start`` binds and starts followers, ``stop`` undoes it."""

    def __init__(
        self,
        settings: RouterSettings,
        policy: RoutingPolicy,
        *,
        store: SnapshotStore | None = None,
        keyring: KeyringStore | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.settings = settings
        self.store = store or SnapshotStore(settings.snapshot_path)
        self.keyring = keyring or KeyringStore(settings.resolved_keyring_path)
        stores: tuple[DocumentStore[Any], ...] = (self.store, self.keyring)
        for saved_store in stores:
            if saved_store.current is None:
                saved = saved_store.load_saved()
                if saved is not None:
                    log.info("starting from saved %s v%d", saved_store.what, saved.version)
        if limiter is None:
            limiter = (
                RedisRateLimiter(settings.redis_url) if settings.redis_url else LocalRateLimiter()
            )
        budget: TokenBudget = (
            RedisTokenBudget(settings.redis_url) if settings.redis_url else LocalTokenBudget()
        )
        demand = None
        reports: ControlPlaneClient | None = None  # demand, figures and traffic share it
        if settings.control_plane_urls:
            reports = ControlPlaneClient(
                settings.control_plane_urls,
                settings.control_plane_token,
                transport=control_plane_transport(settings.fleet_ca),  # router.tls
            )
            demand = DemandNotifier(HttpDemandSink(reports))
        self._reports = reports
        self.core = RouterCore(
            settings,
            self.store,
            policy,
            UpstreamPool(
                ssl_context=worker_context(  # TLS to workers (router.tls)
                    settings.worker_tls_cert, settings.worker_tls_key, settings.fleet_ca
                )
            ),
            limiter,
            ClientLocator(settings.default_location, settings.trusted_proxies, settings.geoip_path),
            demand=demand,
            keyring=self.keyring,
            token_budget=budget,
        )
        self.reporter: FigureReporter | None = None
        if reports is not None:
            self.reporter = FigureReporter(
                self.core.figures,
                reports,
                router_id=settings.name or default_router_id(settings.port),
                interval_s=settings.figures_interval_s,
            )
        self.traffic: TrafficReporter | None = None
        if reports is not None and settings.traffic_report_s > 0:
            self.traffic = TrafficReporter(
                HttpTrafficSink(reports),
                settings.name or default_router_id(settings.port),
                interval_s=settings.traffic_report_s,
                ttft=self.core.generation.ttft,
                brownout=self._brownout_transitions,
            )
            self.core.traffic = self.traffic
        self._http = HttpServer(self.core.handle, Limits(max_body_bytes=settings.max_body_bytes))
        self._tasks: set[asyncio.Task[None]] = set()
        self._coord: Coordination | None = None
        self._handoff: HandoffServer | None = None
        self.took_over = False  # the listening socket came from a router serving before
        self.port = 0

    def _brownout_transitions(self) -> list[dict[str, Any]]:
        """Regions that entered or left brownout since the last traffic report."""
        return [t.to_dict() for t in self.core.brownout_ledger.transitions(time.monotonic())]

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task %s failed", task.get_name(), exc_info=task.exception())

    async def start(self) -> int:
        s = self.settings
        followed: list[tuple[DocumentStore[Any], str, str]] = [
            (self.store, s.snapshot_key, "/v1/routing/snapshot")
        ]
        if s.require_api_key:
            followed.append((self.keyring, s.keyring_key, "/v1/routing/api-keys"))
        if s.coordination_url:
            from meridian.coordination import open_coordination

            self._coord = open_coordination(s.coordination_url)
            for store, key, _ in followed:
                watcher = CoordinationFollower(store, self._coord, key)
                self._spawn(watcher.run(), f"watch {key}")
        if s.control_plane_urls:
            for store, _, route in followed:
                poller = HttpFollower(
                    store, s.control_plane_urls, s.control_plane_token, route,
                    transport=control_plane_transport(s.fleet_ca),  # router.tls
                )  # fmt: skip
                self._spawn(poller.run(), f"poll {route}")
        if self.reporter is not None:
            self._spawn(self.reporter.run(), "figures")
        if self.traffic is not None:
            self._spawn(self.traffic.run(), "traffic report")
        ssl_ctx = server_context(s.tls_cert, s.tls_key) if s.tls_cert and s.tls_key else None
        listener = None
        if s.port:
            path = s.resolved_handoff_path
            if path.exists():  # a router serves this port: be ready before sharing its socket
                await self._wait_ready(s.takeover_ready_timeout_s)
                listener = await asyncio.to_thread(take_listener, path)
        self.took_over = listener is not None
        self.core.lag.start()
        self.port = await self._http.start(s.host, s.port, ssl_ctx, sock=listener)
        if s.port:
            self._handoff = HandoffServer(s.resolved_handoff_path, self._http.listener)
            try:
                await self._handoff.start()
            except OSError as exc:
                log.warning("cannot offer the listening socket for restarts: %s", exc)
                self._handoff = None
        if self.took_over:
            log.info("took the listening socket over from the router serving before")
        return self.port

    async def _wait_ready(self, timeout_s: float) -> None:
        """Until the routing snapshot (and the keyring, when keys are required) are here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.store.current is not None and (
                not self.settings.require_api_key or self.keyring.current is not None
            ):
                return
            await asyncio.sleep(0.05)
        log.warning("taking the listening socket over without routing state after %.0fs", timeout_s)

    async def drain(self) -> None:
        """Stop accepting (a successor may go on from the same socket), answer the requests
        already received, then stop."""
        if self._handoff is not None:
            await self._handoff.close()
            self._handoff = None
        await self.core.hold.close()  # held requests are refused now, not left to wait
        left = await self._http.drain(self.settings.drain_timeout_s)
        if left:
            log.warning("closed %d connections still busy after the drain timeout", left)
        await self.stop()

    async def stop(self) -> None:
        if self._handoff is not None:
            await self._handoff.close()
            self._handoff = None
        await self._http.stop()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.core.close()
        if self.core.demand is not None:
            await self.core.demand.close()
        if self.traffic is not None:
            await self.traffic.close()
        if self._reports is not None:  # after every reporter that posts through it
            await self._reports.close()
        if self._coord is not None:
            await self._coord.close()
        self.core.pool.close()
        await self.core.limiter.close()
        await self.core.token_budget.close()
        self.core.locator.close()
