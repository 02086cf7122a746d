"""Building, publishing and serving the routing snapshot.

- :func:`build_snapshot` is pure: registry view + merged region summaries → snapshot.
- :class:`SnapshotPublisher` runs on the leader only: a routing-membership change
  is published within ``debounce_s``; load-only changes at most every
  ``load_interval_s``; identical content only every ``refresh_s`` (so that a
  snapshot's ``generated_at`` tells routers how stale it is). Versions only grow,
  across leaders too (a new leader continues from the stored version).
- :class:`SnapshotFeed` runs on every replica: it follows the published key and
  answers long-polls (the HTTP feed for routers without a coordination client).
- :class:`KeyringPublisher` (leader) and :class:`KeyringFeed` (every replica) do the
  same for end users' API keys, a document of its own that changes only when keys do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Generic, Protocol, TypeVar

from control_plane.health.grace import ReconnectGrace
from control_plane.health.inventory import RegistryView
from control_plane.health.ledger import Change
from control_plane.health.summary import RegionSummary
from meridian.coordination import Coordination, EventKind
from meridian.eventwait import wait_event
from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot

__all__ = [
    "KEYRING_KEY",
    "SNAPSHOT_KEY",
    "DocumentFeed",
    "KeyringFeed",
    "KeyringPublisher",
    "SnapshotFeed",
    "SnapshotPublisher",
    "build_snapshot",
]

SNAPSHOT_KEY = "/meridian/routing/snapshot"
KEYRING_KEY = "/meridian/routing/api-keys"
log = logging.getLogger(__name__)


def build_snapshot(
    version: int,
    registry: RegistryView,
    summaries: Mapping[str, RegionSummary],
    *,
    generated_at: float,
    carried: Mapping[str, RegionView] | None = None,
    mirrors: Mapping[tuple[str, str, str], tuple[float, str]] | None = None,
    routers: int = 0,
) -> RoutingSnapshot:
    """``carried``: views to keep for regions with no summary, or one from an agent that
    has registered but not reported yet (a leader's reconnect grace,
    ``control_plane.health.grace``); without one, such a region is down, marked
    ``unmonitored_since`` (unless drained or disabled): it is down for want of reports, not on
    evidence, and routers may keep routing to it on their own observations. ``mirrors``:
    (model, version, region) → (share, comparison) of the deployments a rollout mirrors
    requests to."""
    regions: list[RegionView] = []
    for record in registry.regions:
        summary = summaries.get(record.name)
        silent = summary is None or summary.last_report_at == 0.0
        kept = carried.get(record.name) if carried and silent else None
        if kept is not None and record.status != "disabled":
            state = kept.state
            if record.status == "draining" and state != HealthState.DOWN:
                state = HealthState.DRAINING
            regions.append(replace(kept, state=state, lat=record.lat, lon=record.lon))
            continue
        if record.status == "disabled" or summary is None:
            regions.append(
                RegionView(
                    name=record.name,
                    state=HealthState.DOWN,
                    lat=record.lat,
                    lon=record.lon,
                    gpu_type=record.gpu_type,
                    gpu_count=record.gpu_count,
                    # silent, not taken out by an operator: down for want of news
                    unmonitored_since=generated_at if record.status == "active" else 0.0,
                )
            )
            continue
        state = summary.state
        if record.status == "draining" and state != HealthState.DOWN:
            state = HealthState.DRAINING
        routable = [w for w in summary.workers if w.state.routable]
        regions.append(
            RegionView(
                name=record.name,
                state=state,
                lat=record.lat,
                lon=record.lon,
                gpu_type=record.gpu_type,
                gpu_count=len(summary.gpus) if summary.gpus else record.gpu_count,
                healthy_gpus=summary.healthy_gpus,
                capacity_rps=round(sum(max(w.capacity_rps, w.throughput_rps) for w in routable), 2),
                queue_depth=sum(w.queue_depth for w in routable),
                in_flight=sum(w.in_flight for w in routable),
                workers=tuple(w.view() for w in summary.workers),
            )
        )
    deployments = tuple(
        DeploymentRoute(
            model=d.model,
            version=d.version,
            region=d.region,
            weight=d.traffic_weight,
            variant=d.variant,
            mirror=(mirrors or {}).get(d.key, (0.0, ""))[0],
            compare=(mirrors or {}).get(d.key, (0.0, ""))[1],
            degrade_to=d.degrade_to,
        )
        for d in registry.deployments
    )
    return RoutingSnapshot(
        version=version,
        generated_at=generated_at,
        regions=tuple(regions),
        deployments=deployments,
        routers=routers,
    )


def _keep_unmonitored_since(
    snap: RoutingSnapshot, previous: RoutingSnapshot | None
) -> RoutingSnapshot:
    """A region unmonitored in ``previous`` too keeps the time it became so."""
    if previous is None or not any(r.unmonitored_since for r in snap.regions):
        return snap
    regions = []
    for r in snap.regions:
        before = previous.region(r.name) if r.unmonitored_since else None
        if before is not None and 0 < before.unmonitored_since < r.unmonitored_since:
            r = replace(r, unmonitored_since=before.unmonitored_since)
        regions.append(r)
    return replace(snap, regions=tuple(regions), _by_name={})


class SnapshotPublisher:
    def __init__(
        self,
        coord: Coordination,
        build: Callable[[int], RoutingSnapshot],
        *,
        key: str = SNAPSHOT_KEY,
        debounce_s: float = 0.05,
        load_interval_s: float = 1.0,
        grace_s: float = 0.0,
        refresh_s: float = 5.0,
    ) -> None:
        self._coord = coord
        self._build = build
        self.key = key
        self._debounce = debounce_s
        self._load_interval = load_interval_s
        self.grace = ReconnectGrace(grace_s)  # the builder reads ``grace.carried(now)``
        # at least this often the leader republishes, unchanged content too: a snapshot's
        # ``generated_at`` is then a leader's word that it is current, and routers measure
        # their staleness from it (0: only on changes)
        self._refresh = refresh_s
        self._published_at = float("-inf")  # monotonic
        self._urgent = False
        self._load = False
        self._wake = asyncio.Event()
        self.version = 0
        self.publications = 0
        self.last_published: RoutingSnapshot | None = None
        self._last_content: tuple[object, ...] | None = None

    def mark(self, _region: str = "", change: Change = Change.STATE) -> None:
        """Something changed: a listener for the ledger/fleet view/registry."""
        if change == Change.LOAD:
            self._load = True
        else:
            self._urgent = True
            self._wake.set()

    def hold(self) -> None:
        """The coordination store is back after a loss: the summaries that lapsed meanwhile
        are not yet renewed; keep the regions as last published for the grace period."""
        if self.grace.grace_s > 0:
            self.grace.begin(time.monotonic(), self.last_published)
            log.info("store regained: keeping the last regions' states for %.1fs",
                     self.grace.grace_s)  # fmt: skip

    async def run(self) -> None:
        # a new term: another leader may have published since, so compare with nothing
        self._last_content = None
        existing = await self._coord.get(self.key)
        stored = None
        if existing is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                stored = RoutingSnapshot.from_json(existing.value)
                self.version = max(self.version, stored.version)
        self.grace.begin(time.monotonic(), stored or self.last_published)
        if self.grace.active(time.monotonic()):
            log.info("new term: regions not yet reported keep their states for %.1fs",
                     self.grace.grace_s)  # fmt: skip
        await self._publish()
        last = time.monotonic()
        while True:
            now = time.monotonic()
            timeout = max(0.0, self._load_interval - (now - last))
            in_grace = self.grace.active(now)
            if in_grace:
                timeout = min(timeout, self.grace.left_s(now))
            if self._refresh > 0:
                timeout = min(timeout, max(0.0, self._published_at + self._refresh - now))
            await wait_event(self._wake, timeout)
            if in_grace and not self.grace.active(time.monotonic()):
                self._urgent = True  # the grace is over: silent regions are published down
            if self._refresh_due():
                self._urgent = True
            if self._urgent:
                await asyncio.sleep(self._debounce)  # gather a burst of changes into one
            elif not self._load or time.monotonic() - last < self._load_interval:
                continue
            self._wake.clear()
            self._urgent = self._load = False
            try:
                await self._publish()
            except Exception as exc:
                log.warning("publishing the routing snapshot failed: %s", exc)
                self._urgent = True
                await asyncio.sleep(0.2)
            last = time.monotonic()

    def _refresh_due(self) -> bool:
        return self._refresh > 0 and time.monotonic() - self._published_at >= self._refresh

    async def _publish(self) -> None:
        candidate = _keep_unmonitored_since(self._build(self.version + 1), self.last_published)
        content = (candidate.regions, candidate.deployments, candidate.routers)
        if content == self._last_content and not self._refresh_due():
            return
        await self._coord.put(self.key, candidate.to_json())
        self.version = candidate.version
        self._last_content = content
        self.last_published = candidate
        self._published_at = time.monotonic()
        self.publications += 1


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


D = TypeVar("D", bound=Versioned)


class DocumentFeed(Generic[D]):
    """The latest published version of a document on this replica, with long-poll waiting."""

    def __init__(self, coord: Coordination, *, key: str, parse: Callable[[bytes], D]) -> None:
        self._coord = coord
        self.key = key
        self._parse = parse
        self.current: D | None = None
        self.raw: bytes = b""
        self._changed = asyncio.Condition()
        # following the store right now; a replica cut off from it cannot vouch that what
        # it holds is current, so its long-poll answers 503 instead of 304
        self.live = False

    @property
    def version(self) -> int:
        return self.current.version if self.current is not None else 0

    async def offer(self, raw: bytes) -> None:
        try:
            document = self._parse(raw)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed document under %s: %s", self.key, exc)
            return
        if document.version <= self.version:
            return
        async with self._changed:
            self.current, self.raw = document, raw
            self._changed.notify_all()

    async def wait_newer(self, than: int, timeout: float) -> bool:
        """True once a version newer than ``than`` is held; False after ``timeout``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: self.version > than)
        return self.version > than

    async def run(self) -> None:
        delay = 0.1
        while True:
            try:
                items, revision = await self._coord.get_prefix(self.key)
                for kv in items:
                    if kv.key == self.key:
                        await self.offer(kv.value)
                async with await self._coord.watch(self.key, start_revision=revision + 1) as events:
                    delay = 0.1
                    self.live = True
                    async for event in events:
                        if event.kind == EventKind.PUT:
                            await self.offer(event.value)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("following %s failed (%s); keeping the last", self.key, exc)
            finally:
                self.live = False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


class SnapshotFeed(DocumentFeed[RoutingSnapshot]):
    def __init__(self, coord: Coordination, *, key: str = SNAPSHOT_KEY) -> None:
        super().__init__(coord, key=key, parse=RoutingSnapshot.from_json)


class KeyringFeed(DocumentFeed[ApiKeyring]):
    def __init__(self, coord: Coordination, *, key: str = KEYRING_KEY) -> None:
        super().__init__(coord, key=key, parse=ApiKeyring.from_json)


class KeyringPublisher:
    """Leader only: publishes the keyring when the set of active keys changes.

    ``new_term`` continues from the stored version (versions grow across leaders) and
    does not republish what the previous leader already published. Unchanged keys are
    republished every ``refresh_s`` all the same (the keyring's ``generated_at`` is how
    routers measure its staleness): the leader read them from the registry just now.
    """

    def __init__(
        self, coord: Coordination, *, key: str = KEYRING_KEY, refresh_s: float = 5.0
    ) -> None:
        self._coord = coord
        self.key = key
        self.version = 0
        self._published: tuple[ApiKeyGrant, ...] | None = None
        self._refresh = refresh_s
        self._published_at = float("-inf")  # monotonic

    async def new_term(self) -> None:
        self._published = None
        existing = await self._coord.get(self.key)
        if existing is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                stored = ApiKeyring.from_json(existing.value)
                self.version = max(self.version, stored.version)
                self._published = stored.keys
                age = max(0.0, time.time() - stored.generated_at)
                self._published_at = time.monotonic() - age

    async def publish(self, keys: tuple[ApiKeyGrant, ...]) -> bool:
        """Publish ``keys`` unless they are what was last published (and that is recent);
        True if published."""
        fresh = self._refresh <= 0 or time.monotonic() - self._published_at < self._refresh
        if keys == self._published and fresh:
            return False
        ring = ApiKeyring(self.version + 1, time.time(), keys)
        await self._coord.put(self.key, ring.to_json())
        self.version, self._published = ring.version, keys
        self._published_at = time.monotonic()
        return True
