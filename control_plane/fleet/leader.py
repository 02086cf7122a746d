"""Leadership among control-plane replicas.

Replicas share the database and the coordination backend. One of them, elected
through :class:`meridian.coordination.Election`, runs the singleton work
(publishing routing snapshots, reconciling directives); every replica accepts
agent streams and relays region summaries, so reports reach the leader through
the coordination backend whichever replica an agent is connected to.

A leader that loses its lease (crash, partition longer than the TTL) stops its
singleton work; the next candidate's campaign succeeds once the lease expires,
so takeover takes at most about one lease TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from meridian.coordination import Coordination, Election, Lease, keep_alive

__all__ = ["Leadership"]

log = logging.getLogger(__name__)


class Leadership:
    def __init__(
        self,
        coord: Coordination,
        *,
        name: str,
        identity: bytes,
        lead: Callable[[], Coroutine[Any, Any, None]],
        lease_ttl_s: float = 2.0,
        root: str = "/meridian/election",
    ) -> None:
        self._coord = coord
        self._election = Election(coord, name, root=root)
        self._identity = identity
        self._lead = lead
        self._ttl = lease_ttl_s
        self._lease: Lease | None = None
        self.is_leader = False
        self.leader_since: float | None = None  # monotonic
        self.terms = 0

    async def current_leader(self) -> bytes | None:
        found = await self._election.leader()
        return found.value if found else None

    async def run(self) -> None:
        """Campaign, lead while the lease lives, and campaign again; until cancelled."""
        failures = 0
        while True:
            try:
                await self._one_term()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("leadership term ended: %s", exc)
            # quick retry after a lost term; back off while the backend is unreachable
            await asyncio.sleep(min(2.0, 0.2 * 2**failures))

    async def _one_term(self) -> None:
        self._lease = lease = await self._coord.grant_lease(self._ttl)
        keeper = asyncio.create_task(keep_alive(lease), name="leader-lease-keepalive")
        work: asyncio.Task[None] | None = None
        campaign = asyncio.create_task(self._election.campaign(self._identity, lease))
        try:
            await asyncio.wait({keeper, campaign}, return_when=asyncio.FIRST_COMPLETED)
            if not campaign.done() or campaign.exception() is not None:
                return  # the lease died before we won
            self.is_leader = True
            self.leader_since = time.monotonic()
            self.terms += 1
            log.info("leading (term %d)", self.terms)
            work = asyncio.create_task(self._lead(), name="leader-work")
            await asyncio.wait({keeper, work}, return_when=asyncio.FIRST_COMPLETED)
            if work.done() and not work.cancelled() and work.exception() is not None:
                log.error("leader work failed: %r; stepping down", work.exception())
        finally:
            self.is_leader = False
            for task in (work, campaign, keeper):
                if task is not None and not task.done():
                    task.cancel()
            for task in (work, campaign, keeper):
                if task is not None:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            with contextlib.suppress(Exception):
                await self._election.resign()
            with contextlib.suppress(Exception):
                await lease.revoke()
            self._lease = None
