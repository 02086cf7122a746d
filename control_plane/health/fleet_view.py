"""Every replica's merged view of all regions, read from the relayed summaries.

It follows ``/meridian/fleet/regions/`` through the coordination backend. When
several replicas hold a summary for one region (the agent moved), the one with
the latest report wins. When the backend is unreachable the view keeps what it
had (static stability) and resynchronises when it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from control_plane.health.ledger import Change
from control_plane.health.relay import REGIONS_PREFIX
from control_plane.health.summary import RegionSummary
from meridian.coordination import Coordination, EventKind

__all__ = ["FleetView"]

log = logging.getLogger(__name__)


class FleetView:
    def __init__(
        self,
        coord: Coordination,
        *,
        on_change: Callable[[str, Change], None] | None = None,
        prefix: str = REGIONS_PREFIX,
        on_resync: Callable[[], None] | None = None,
    ) -> None:
        """``on_resync`` is called when the view reads the store again after losing it,
        before it applies what it reads (summaries may have lapsed meanwhile)."""
        self._on_resync = on_resync
        self.resyncs = 0
        self._coord = coord
        self._prefix = prefix
        self._listeners: list[Callable[[str, Change], None]] = [on_change] if on_change else []
        self._by_region: dict[str, dict[str, tuple[int, RegionSummary]]] = {}
        self._merged: dict[str, RegionSummary] = {}
        self.synced = asyncio.Event()
        self.events = 0

    def add_listener(self, listener: Callable[[str, Change], None]) -> None:
        self._listeners.append(listener)

    # --- reading ---------------------------------------------------------------------------

    def summary(self, region: str) -> RegionSummary | None:
        return self._merged.get(region)

    def summaries(self) -> dict[str, RegionSummary]:
        return dict(self._merged)

    # --- following -------------------------------------------------------------------------

    def _split(self, key: str) -> tuple[str, str] | None:
        rest = key[len(self._prefix) :]
        region, _, replica = rest.rpartition("/")
        return (region, replica) if region and replica else None

    def _apply(self, key: str, value: bytes | None, revision: int) -> None:
        parts = self._split(key)
        if parts is None:
            return
        region, replica = parts
        holders = self._by_region.setdefault(region, {})
        current = holders.get(replica)
        if current is not None and current[0] > revision:
            return  # older than what we hold
        if value is None:
            holders.pop(replica, None)
        else:
            try:
                holders[replica] = (revision, RegionSummary.from_json(value))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring malformed region summary at %s: %s", key, exc)
                return
        self._remerge(region)

    def _remerge(self, region: str) -> None:
        holders = self._by_region.get(region, {})
        before = self._merged.get(region)
        if holders:
            after = max((s for _rev, s in holders.values()), key=lambda s: s.last_report_at)
            self._merged[region] = after
        else:
            self._by_region.pop(region, None)
            self._merged.pop(region, None)
            after = None
        if before is None and after is None:
            return
        if before is None or after is None or before.state_key() != after.state_key():
            change = Change.STATE
        else:
            change = Change.LOAD
        for listener in self._listeners:
            listener(region, change)

    async def _sync(self, resync: bool = False) -> int:
        items, revision = await self._coord.get_prefix(self._prefix)
        if resync:  # reachable again: tell the publisher before lapsed summaries vanish
            self.resyncs += 1
            if self._on_resync is not None:
                self._on_resync()
        seen: set[tuple[str, str]] = set()
        for kv in items:
            parts = self._split(kv.key)
            if parts is not None:
                seen.add(parts)
                self._apply(kv.key, kv.value, kv.mod_revision)
        for region, holders in list(self._by_region.items()):
            for replica in list(holders):
                if (region, replica) not in seen:
                    self._apply(f"{self._prefix}{region}/{replica}", None, revision)
        return revision

    async def run(self) -> None:
        """Follow the summaries until cancelled; reconnects with backoff."""
        delay = 0.1
        lost = False
        while True:
            try:
                revision = await self._sync(resync=lost)
                lost = False
                self.synced.set()
                async with await self._coord.watch(
                    self._prefix, prefix=True, start_revision=revision + 1
                ) as events:
                    delay = 0.1
                    async for event in events:
                        self.events += 1
                        value = event.value if event.kind == EventKind.PUT else None
                        self._apply(event.key, value, event.revision)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                lost = True
                log.warning("following region summaries failed (%s); keeping the last view", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
