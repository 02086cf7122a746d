"""In-process coordination for the embedded mode (one process, no etcd).

Same semantics as the etcd backend: a global revision, leases that delete their
keys when they expire, watches that see every change in order. Lease expiry is
driven by one owned background task, started with the first lease and stopped
by :meth:`InProcessCoordination.close`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

from meridian.coordination.base import (
    Coordination,
    CoordinationError,
    EventKind,
    KeyValue,
    Lease,
    LeaseExpired,
    Watch,
    WatchEvent,
)
from meridian.eventwait import wait_event

__all__ = ["InProcessCoordination"]

_HISTORY = 10_000  # events kept for watches that start at an older revision


class _MemoryLease(Lease):
    def __init__(self, store: InProcessCoordination, lease_id: int, ttl: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._store = store

    async def refresh(self) -> None:
        self._store._refresh(self.id)

    async def revoke(self) -> None:
        self._store._expire(self.id)


class _MemoryWatch(Watch):
    def __init__(self, store: InProcessCoordination, key: str, prefix: bool) -> None:
        self._store = store
        self.key = key
        self.prefix = prefix
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._closed = False

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    async def _iterate(self) -> AsyncIterator[WatchEvent]:
        while True:
            event = await self.queue.get()
            if event is None:
                if self._store._closed and not self._closed:
                    raise CoordinationError("coordination backend closed")
                return
            yield event

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iterate()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._store._watches.discard(self)
            self.queue.put_nowait(None)


class InProcessCoordination(Coordination):
    def __init__(self) -> None:
        self._data: dict[str, KeyValue] = {}
        self._revision = 1
        self._leases: dict[int, tuple[float, float]] = {}  # id -> (ttl, deadline)
        self._lease_ids = itertools.count(0x1000)
        self._watches: set[_MemoryWatch] = set()
        self._history: collections.deque[WatchEvent] = collections.deque(maxlen=_HISTORY)
        self._reaper: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closed = False

    # --- keys ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise CoordinationError("coordination backend closed")

    def _lease_id(self, lease: Lease | None) -> int:
        if lease is None:
            return 0
        if lease.id not in self._leases:
            raise LeaseExpired(f"lease {lease.id:x} is not alive")
        return lease.id

    def _emit(self, event: WatchEvent) -> None:
        self._history.append(event)
        for watch in self._watches:
            if watch.matches(event.key):
                watch.queue.put_nowait(event)

    def _store(self, key: str, value: bytes, lease_id: int) -> int:
        self._revision += 1
        old = self._data.get(key)
        created = old.create_revision if old else self._revision
        self._data[key] = KeyValue(key, value, created, self._revision, lease_id)
        self._emit(WatchEvent(EventKind.PUT, key, value, self._revision))
        return self._revision

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        self._check_open()
        return self._store(key, value, self._lease_id(lease))

    async def put_if_absent(self, key: str, value: bytes, *, lease: Lease | None = None) -> bool:
        self._check_open()
        lease_id = self._lease_id(lease)
        if key in self._data:
            return False
        self._store(key, value, lease_id)
        return True

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._data.get(key)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check_open()
        items = [kv for k, kv in sorted(self._data.items()) if k.startswith(prefix)]
        return items, self._revision

    def _remove(self, key: str) -> bool:
        if self._data.pop(key, None) is None:
            return False
        self._revision += 1
        self._emit(WatchEvent(EventKind.DELETE, key, b"", self._revision))
        return True

    async def delete(self, key: str) -> bool:
        self._check_open()
        return self._remove(key)

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None
    ) -> Watch:
        self._check_open()
        watch = _MemoryWatch(self, key, prefix)
        if start_revision is not None:
            for event in self._history:
                if event.revision >= start_revision and watch.matches(event.key):
                    watch.queue.put_nowait(event)
        self._watches.add(watch)
        return watch

    # --- leases ----------------------------------------------------------------------------

    async def grant_lease(self, ttl: float) -> Lease:
        self._check_open()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = (ttl, time.monotonic() + ttl)
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap(), name="coordination-lease-reaper")
        self._wakeup.set()
        return _MemoryLease(self, lease_id, ttl)

    def _refresh(self, lease_id: int) -> None:
        self._check_open()
        entry = self._leases.get(lease_id)
        if entry is None:
            raise LeaseExpired(f"lease {lease_id:x} expired or was revoked")
        self._leases[lease_id] = (entry[0], time.monotonic() + entry[0])

    def _expire(self, lease_id: int) -> None:
        if self._leases.pop(lease_id, None) is None:
            return
        for key in [k for k, kv in self._data.items() if kv.lease == lease_id]:
            self._remove(key)

    async def _reap(self) -> None:
        while True:
            now = time.monotonic()
            for lease_id, (_ttl, deadline) in list(self._leases.items()):
                if deadline <= now:
                    self._expire(lease_id)
            nearest = min((d for _t, d in self._leases.values()), default=None)
            self._wakeup.clear()
            timeout = None if nearest is None else max(0.0, nearest - time.monotonic())
            await wait_event(self._wakeup, timeout)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for watch in list(self._watches):
            watch.queue.put_nowait(None)
        self._watches.clear()
