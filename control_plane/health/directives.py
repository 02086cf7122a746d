"""Directives: what each region should run, decided by the leader, delivered by any replica.

The leader's :class:`DirectiveReconciler` turns the registry's deployments into
one ``Directives`` message per region and stores it (serialized protobuf) under
``/meridian/fleet/directives/<region>`` when it changed. Every replica's
:class:`DirectiveBoard` follows that prefix and pushes changes to the agent
streams it holds. Generation 0 means "nothing decided yet": agents then keep
running what they run.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Mapping

from control_plane.health.inventory import DeploymentRecord, RegistryView
from meridian.coordination import Coordination, EventKind
from proto import region_pb2 as pb

__all__ = ["DIRECTIVES_PREFIX", "DirectiveBoard", "DirectiveReconciler", "directives_for"]

DIRECTIVES_PREFIX = "/meridian/fleet/directives/"
log = logging.getLogger(__name__)


def directives_for(
    registry: RegistryView,
    region: str,
    *,
    report_interval_s: float,
    config: Mapping[str, str] | None = None,
    replicas: Mapping[tuple[str, str, str], int] | None = None,
) -> pb.Directives:
    """The desired workers of ``region``: one entry per deployment, with the autoscaler's
    ``replicas`` (by model, version, region) where it decided, else ``min_replicas`` (at
    least one); and one reserve worker of each deployment's ``degrade_to`` variant."""
    message = pb.Directives(report_interval_s=report_interval_s, config=dict(config or {}))
    record = registry.region(region)
    if record is not None and record.status != "disabled":
        for d in registry.deployments_in(region):
            message.workers.append(
                pb.DesiredWorker(
                    model=d.model,
                    version=d.version,
                    variant=d.variant,
                    artifact_url=d.artifact_url,
                    artifact_sha256=d.artifact_sha256,
                    replicas=_replicas(d, replicas),
                )
            )
            if d.degrade_to and d.max_replicas > 0:
                # one reserve worker of the variant: it takes the overflow, in brownout only
                message.workers.append(
                    pb.DesiredWorker(
                        model=d.model,
                        version=d.version,
                        variant=d.degrade_to,
                        artifact_url=d.degrade_url,
                        artifact_sha256=d.degrade_sha256,
                        replicas=1,
                        reserve=True,
                    )
                )
    body = message.SerializeToString(deterministic=True)
    message.generation = int.from_bytes(hashlib.sha256(body).digest()[:7], "big") or 1
    return message


def _replicas(d: DeploymentRecord, decided: Mapping[tuple[str, str, str], int] | None) -> int:
    if decided is not None and d.key in decided:
        return max(0, min(decided[d.key], d.max_replicas))
    if d.autoscale_pinned and d.pinned_replicas is not None:
        return min(d.pinned_replicas, d.max_replicas)
    return max(1, d.min_replicas) if d.max_replicas > 0 else 0


class DirectiveReconciler:
    """Leader-only: store every region's directives when they change."""

    def __init__(
        self,
        coord: Coordination,
        *,
        report_interval_s: float,
        config: Mapping[str, str] | None = None,
        prefix: str = DIRECTIVES_PREFIX,
    ) -> None:
        self._coord = coord
        self._interval = report_interval_s
        self._config = dict(config or {})
        self._prefix = prefix
        self._stored: dict[str, int] = {}
        self._loaded = False
        self.writes = 0

    def new_term(self) -> None:
        """Leadership (re)gained: another leader may have written since; read again."""
        self._stored.clear()
        self._loaded = False

    async def reconcile(
        self,
        registry: RegistryView,
        replicas: Mapping[tuple[str, str, str], int] | None = None,
    ) -> None:
        if not self._loaded:
            items, _ = await self._coord.get_prefix(self._prefix)
            for kv in items:
                stored = pb.Directives.FromString(kv.value)
                self._stored[kv.key[len(self._prefix) :]] = stored.generation
            self._loaded = True
        for region in [r for r in self._stored if registry.region(r) is None]:
            await self._coord.delete(self._prefix + region)  # the region was deleted
            del self._stored[region]
            self.writes += 1
        for record in registry.regions:
            message = directives_for(
                registry,
                record.name,
                report_interval_s=self._interval,
                config=self._config,
                replicas=replicas,
            )
            if self._stored.get(record.name) != message.generation:
                await self._coord.put(
                    self._prefix + record.name, message.SerializeToString(deterministic=True)
                )
                self._stored[record.name] = message.generation
                self.writes += 1


class DirectiveBoard:
    """Every replica: the latest directives per region and the streams waiting for them."""

    def __init__(
        self, coord: Coordination, *, report_interval_s: float, prefix: str = DIRECTIVES_PREFIX
    ) -> None:
        self._coord = coord
        self._prefix = prefix
        self._interval = report_interval_s
        self._current: dict[str, pb.Directives] = {}
        self._subscribers: dict[str, set[asyncio.Queue[pb.Directives]]] = {}

    def current(self, region: str) -> pb.Directives:
        found = self._current.get(region)
        if found is not None:
            return found
        return pb.Directives(generation=0, report_interval_s=self._interval)

    def subscribe(self, region: str) -> asyncio.Queue[pb.Directives]:
        queue: asyncio.Queue[pb.Directives] = asyncio.Queue(maxsize=1)
        self._subscribers.setdefault(region, set()).add(queue)
        return queue

    def unsubscribe(self, region: str, queue: asyncio.Queue[pb.Directives]) -> None:
        subscribers = self._subscribers.get(region)
        if subscribers is not None:
            subscribers.discard(queue)
            if not subscribers:
                del self._subscribers[region]

    def _offer(self, region: str, message: pb.Directives) -> None:
        old = self._current.get(region)
        if old is not None and old.generation == message.generation:
            return
        self._current[region] = message
        for queue in self._subscribers.get(region, ()):
            if queue.full():
                queue.get_nowait()  # only the newest directives matter
            queue.put_nowait(message)

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                items, revision = await self._coord.get_prefix(self._prefix)
                for kv in items:
                    self._offer(kv.key[len(self._prefix) :], pb.Directives.FromString(kv.value))
                async with await self._coord.watch(
                    self._prefix, prefix=True, start_revision=revision + 1
                ) as events:
                    delay = 0.1
                    async for event in events:
                        if event.kind == EventKind.PUT:
                            region = event.key[len(self._prefix) :]
                            self._offer(region, pb.Directives.FromString(event.value))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following directives failed (%s); keeping the last", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
