"""Relays this replica's region summaries to the coordination backend.

Keys are ``<prefix><region>/<replica>`` bound to this replica's lease, so they
vanish when the replica dies. A state change is written at once; load-only
changes at most once per ``load_interval_s`` per region, which bounds the write
load however often agents report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from control_plane.health.ledger import Change
from control_plane.health.summary import RegionSummary
from meridian.coordination import Coordination, Lease
from meridian.eventwait import wait_event

__all__ = ["REGIONS_PREFIX", "SummaryRelay"]

REGIONS_PREFIX = "/meridian/fleet/regions/"
log = logging.getLogger(__name__)


class SummaryRelay:
    def __init__(
        self,
        coord: Coordination,
        *,
        replica: str,
        summary_of: Callable[[str], RegionSummary | None],
        lease_ttl_s: float = 3.0,
        load_interval_s: float = 1.0,
        prefix: str = REGIONS_PREFIX,
    ) -> None:
        self._coord = coord
        self.replica = replica
        self._summary_of = summary_of
        self._ttl = lease_ttl_s
        self._load_interval = load_interval_s
        self._prefix = prefix
        self._urgent: set[str] = set()
        self._load: set[str] = set()
        self._gone: set[str] = set()
        self._wake = asyncio.Event()
        self._lease: Lease | None = None
        self._known: set[str] = set()  # regions whose summary this replica has written
        self.writes = 0

    def key(self, region: str) -> str:
        return f"{self._prefix}{region}/{self.replica}"

    def notify(self, region: str, change: Change) -> None:
        """The ledger's listener (synchronous, cheap)."""
        if change == Change.LOAD:
            self._load.add(region)
            return
        if change == Change.GONE:
            self._gone.add(region)
        else:
            self._urgent.add(region)
        self._load.discard(region)
        self._wake.set()

    async def run(self) -> None:
        """Write until cancelled; re-grants the lease and rewrites all if it was lost."""
        last_load = time.monotonic()
        keeper: asyncio.Task[None] | None = None
        try:
            while True:
                if self._lease is None:
                    self._lease = await self._grant()
                    keeper = asyncio.create_task(self._keep_alive(self._lease))
                await wait_event(self._wake, self._load_interval / 4)
                self._wake.clear()
                regions, self._urgent = self._urgent, set()
                if time.monotonic() - last_load >= self._load_interval:
                    last_load = time.monotonic()
                    regions |= self._load
                    self._load = set()
                gone, self._gone = self._gone, set()
                try:
                    await self._flush(regions, gone)
                except Exception as exc:  # backend away: keep the work, retry later
                    log.warning("relaying region summaries failed: %s", exc)
                    self._urgent |= regions
                    self._gone |= gone
                    await asyncio.sleep(0.2)
                if keeper is not None and keeper.done():
                    # the lease died (backend away longer than its TTL): start over
                    self._lease = None
                    self._urgent |= set(self._known)
        finally:
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await keeper

    async def _flush(self, regions: set[str], gone: set[str]) -> None:
        lease = self._lease
        for region in regions:
            summary = self._summary_of(region)
            if summary is None:
                continue
            await self._coord.put(self.key(region), summary.to_json(), lease=lease)
            self._known.add(region)
            self.writes += 1
        for region in gone:
            await self._coord.delete(self.key(region))
            self._known.discard(region)
            self.writes += 1

    async def _grant(self) -> Lease:
        while True:
            try:
                return await self._coord.grant_lease(self._ttl)
            except Exception as exc:
                log.warning("cannot get a lease for region summaries: %s", exc)
                await asyncio.sleep(0.5)

    async def _keep_alive(self, lease: Lease) -> None:
        from meridian.coordination import keep_alive

        with contextlib.suppress(Exception):
            await keep_alive(lease)
        self._wake.set()

    async def close(self) -> None:
        """Withdraw this replica's summaries at once (orderly shutdown)."""
        if self._lease is not None:
            with contextlib.suppress(Exception):
                await self._lease.revoke()
            self._lease = None
