"""Leader election on any :class:`~meridian.coordination.base.Coordination` backend.

The etcd recipe: every candidate creates ``<prefix>/<lease id>`` in a
transaction (create only if absent) bound to its own lease; the candidate whose
key has the lowest create revision leads. The others each watch the key just
ahead of theirs and look again when it is deleted (resignation or lease
expiry), so a dead leader is replaced once its lease runs out.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from meridian.coordination.base import (
    Coordination,
    EventKind,
    KeyValue,
    Lease,
    LeaseExpired,
)

__all__ = ["Election", "keep_alive"]


async def keep_alive(lease: Lease, *, interval: float | None = None) -> None:
    """Refresh ``lease`` every ``interval`` (default a third of its TTL) until it fails.

    Returns only by raising: :class:`LeaseExpired` or a ``CoordinationError`` when the
    backend cannot be reached for longer than the lease lives.
    """
    period = interval if interval is not None else max(0.05, lease.ttl / 3)
    loop = asyncio.get_running_loop()
    last_ok = loop.time()
    while True:
        await asyncio.sleep(period)
        try:
            await lease.refresh()
            last_ok = loop.time()
        except LeaseExpired:
            raise
        except Exception:
            if loop.time() - last_ok >= lease.ttl:
                raise
            # a transient error: try again at the next period while the lease may still live


class Election:
    """Campaign for, observe and resign leadership of ``name``."""

    def __init__(self, coord: Coordination, name: str, *, root: str = "/meridian/election") -> None:
        self._coord = coord
        self.prefix = f"{root.rstrip('/')}/{name}/"
        self._key: str | None = None

    @property
    def key(self) -> str | None:
        """Our candidate key while campaigning or leading."""
        return self._key

    async def campaign(self, value: bytes, lease: Lease) -> None:
        """Return once we lead. Raises :class:`LeaseExpired` if our lease dies meanwhile."""
        key = f"{self.prefix}{lease.id:016x}"
        if not await self._coord.put_if_absent(key, value, lease=lease):
            await self._coord.put(key, value, lease=lease)
        self._key = key
        while True:
            candidates, revision = await self._coord.get_prefix(self.prefix)
            mine = next((c for c in candidates if c.key == key), None)
            if mine is None:
                self._key = None
                raise LeaseExpired(f"candidate key {key} vanished: the lease expired")
            ahead = [c for c in candidates if c.create_revision < mine.create_revision]
            if not ahead:
                return
            predecessor = max(ahead, key=lambda c: c.create_revision)
            async with await self._coord.watch(
                predecessor.key, start_revision=revision + 1
            ) as events:
                async for event in events:
                    if event.kind == EventKind.DELETE:
                        break

    async def resign(self) -> None:
        """Give up leadership (or candidacy); the next candidate takes over at once."""
        if self._key is not None:
            key, self._key = self._key, None
            await self._coord.delete(key)

    async def leader(self) -> KeyValue | None:
        """The current leader's key and value, or None when nobody leads."""
        candidates, _ = await self._coord.get_prefix(self.prefix)
        return min(candidates, key=lambda c: c.create_revision, default=None)

    async def is_leader(self) -> bool:
        current = await self.leader()
        return current is not None and current.key == self._key

    async def observe(self) -> AsyncIterator[bytes | None]:
        """Yield the leader's value now and on every change of leader (None: no leader)."""
        candidates, revision = await self._coord.get_prefix(self.prefix)
        leader = min(candidates, key=lambda c: c.create_revision, default=None)
        last = leader.value if leader else None
        yield last
        async with await self._coord.watch(
            self.prefix, prefix=True, start_revision=revision + 1
        ) as events:
            async for _event in events:
                current = await self.leader()
                value = current.value if current else None
                if value != last:
                    last = value
                    yield value
