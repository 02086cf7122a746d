"""The router's copy of the routing snapshot, kept on disk for static stability.

The router routes on the last good snapshot whatever happens to the control
plane, etcd or Redis. Every accepted snapshot is written atomically to disk, and
a router that starts with no reachable control plane starts from that file.
``confirmed_age()`` says how long ago a source last confirmed the snapshot is
current (a new version, or a long-poll that found nothing new).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from pathlib import Path

import httpx

from meridian.coordination import Coordination
from meridian.snapshot import RoutingSnapshot

__all__ = ["CoordinationSnapshotFollower", "HttpSnapshotFollower", "SnapshotStore"]

log = logging.getLogger(__name__)


class SnapshotStore:
    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._snapshot: RoutingSnapshot | None = None
        self._confirmed_at: float | None = None
        self.changed = asyncio.Event()

    @property
    def current(self) -> RoutingSnapshot | None:
        return self._snapshot

    def load_saved(self) -> RoutingSnapshot | None:
        """Start from the snapshot saved by an earlier run, if any."""
        if self._path is None or not self._path.exists():
            return None
        try:
            snap = RoutingSnapshot.from_json(self._path.read_bytes())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable saved snapshot %s: %s", self._path, exc)
            return None
        self._snapshot = snap
        return snap

    def offer(self, snap: RoutingSnapshot) -> bool:
        """Accept ``snap`` if it is newer than the current one; persist it. True if accepted."""
        self.confirm()
        if self._snapshot is not None and snap.version <= self._snapshot.version:
            return False
        self._snapshot = snap
        if self._path is not None:
            self._save(snap)
        self.changed.set()
        self.changed = asyncio.Event()
        return True

    def confirm(self) -> None:
        """A source confirmed that the current snapshot is the newest it has."""
        self._confirmed_at = time.monotonic()

    def confirmed_age(self) -> float | None:
        """Seconds since a source last confirmed the snapshot; None if never (saved file only)."""
        if self._confirmed_at is None:
            return None
        return time.monotonic() - self._confirmed_at

    def _save(self, snap: RoutingSnapshot) -> None:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(snap.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


class HttpSnapshotFollower:
    """Follows ``GET /v1/routing/snapshot`` with ETag long-polls; backs off when it fails."""

    def __init__(
        self,
        store: SnapshotStore,
        base_urls: list[str],
        token: str,
        wait_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._urls = base_urls
        self._wait = wait_s
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(wait_s + 5.0, connect=1.0),
            transport=transport,
        )
        self.last_error = ""

    async def run(self) -> None:
        backoff = 0.1
        turn = 0
        try:
            while True:
                url = self._urls[turn % len(self._urls)].rstrip("/") + "/v1/routing/snapshot"
                try:
                    await self._poll_once(url)
                    backoff = 0.1
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.last_error = f"{url}: {exc!r}"
                    turn += 1
                    await asyncio.sleep(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    async def _poll_once(self, url: str) -> None:
        current = self._store.current
        headers = {}
        if current is not None:
            headers["if-none-match"] = f'"{current.version}"'
        response = await self._client.get(url, params={"wait": self._wait}, headers=headers)
        if response.status_code == 304:
            self._store.confirm()
            return
        response.raise_for_status()
        self._store.offer(RoutingSnapshot.from_json(response.content))


class CoordinationSnapshotFollower:
    """Follows the snapshot key in etcd (or the in-process backend): read, then watch.

    When the backend fails the router keeps its snapshot and tries again with backoff;
    ``confirm`` is called on every event and read so the snapshot's age stays honest.
    """

    def __init__(
        self, store: SnapshotStore, coord: Coordination, key: str = "/meridian/routing/snapshot"
    ) -> None:
        self._store = store
        self._coord = coord
        self._key = key
        self.last_error = ""

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # backend unreachable: keep routing on what we have
                self.last_error = repr(exc)
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)

    async def _follow(self) -> None:
        current = await self._coord.get(self._key)
        start = None
        if current is not None:
            self._offer(current.value)
            start = current.mod_revision + 1
        async with await self._coord.watch(self._key, start_revision=start) as events:
            async for event in events:
                if event.value:
                    self._offer(event.value)

    def _offer(self, raw: bytes) -> None:
        try:
            self._store.offer(RoutingSnapshot.from_json(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed snapshot: %s", exc)
