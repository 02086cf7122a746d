"""The router's copies of what the control plane publishes, kept on disk for static stability.

Two versioned documents: the routing snapshot and the keyring of end users' API keys.
The router routes (and checks keys) on the last good version whatever happens to the
control plane, etcd or Redis. Every accepted version is written atomically to disk,
and a router that starts with no reachable control plane starts from those files.

``confirmed_age()`` is the document's staleness: seconds since the control plane's
leader generated it (its ``generated_at``, wall-clock seconds, read once on receipt).
The leader republishes at least every few seconds while it can reach the coordination
store, so the age stays small exactly while a leader vouches for what the router holds;
a long-poll answered "nothing newer" vouches for nothing and does not reset it, nor
does reading the same version again from etcd or from the file saved on disk.
``heard_age()`` is only how long ago a source last answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import httpx

from meridian.coordination import Coordination
from meridian.keyring import ApiKeyring
from meridian.snapshot import RoutingSnapshot

__all__ = [
    "CoordinationFollower",
    "DocumentStore",
    "HttpFollower",
    "KeyringStore",
    "SnapshotStore",
]

log = logging.getLogger(__name__)


class Document(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def generated_at(self) -> float: ...

    def to_json(self) -> bytes: ...


D = TypeVar("D", bound=Document)


class DocumentStore(Generic[D]):
    def __init__(self, path: Path | None, parse: Callable[[bytes], D], what: str) -> None:
        self._path = path
        self._parse = parse
        self.what = what
        self._current: D | None = None
        self._generated_mono: float | None = None  # generated_at on the monotonic clock
        self._heard_at: float | None = None
        self.changed = asyncio.Event()

    @property
    def current(self) -> D | None:
        return self._current

    def parse(self, raw: bytes) -> D:
        return self._parse(raw)

    def load_saved(self) -> D | None:
        """Start from the version saved by an earlier run, if any."""
        if self._path is None or not self._path.exists():
            return None
        try:
            document = self._parse(self._path.read_bytes())
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable saved %s %s: %s", self.what, self._path, exc)
            return None
        self._take(document)
        return document

    def _take(self, document: D) -> None:
        self._current = document
        age = max(0.0, time.time() - document.generated_at)  # across hosts: wall clocks
        self._generated_mono = time.monotonic() - age

    def offer(self, document: D) -> bool:
        """Accept ``document`` if it is newer than the current one; persist it."""
        self.confirm()
        if self._current is not None and document.version <= self._current.version:
            return False
        self._take(document)
        if self._path is not None:
            self._save(document)
        self.changed.set()
        self.changed = asyncio.Event()
        return True

    def confirm(self) -> None:
        """A source answered (a new version, or nothing newer): see ``heard_age``."""
        self._heard_at = time.monotonic()

    def confirmed_age(self) -> float | None:
        """Seconds since the leader generated the current document; None without one."""
        if self._generated_mono is None:
            return None
        return time.monotonic() - self._generated_mono

    def heard_age(self) -> float | None:
        """Seconds since a source last answered; None if none has (a saved file)."""
        if self._heard_at is None:
            return None
        return time.monotonic() - self._heard_at

    def _save(self, document: D) -> None:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(document.to_json())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)


class SnapshotStore(DocumentStore[RoutingSnapshot]):
    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path, RoutingSnapshot.from_json, "routing snapshot")


class KeyringStore(DocumentStore[ApiKeyring]):
    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path, ApiKeyring.from_json, "API keyring")


class HttpFollower(Generic[D]):
    """Follows a control-plane document route (``/v1/routing/snapshot``, ...) with ETag
    long-polls over the given control-plane URLs in turn; backs off when it fails."""

    def __init__(
        self,
        store: DocumentStore[D],
        base_urls: list[str],
        token: str,
        route: str = "/v1/routing/snapshot",
        wait_s: float = 20.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._store = store
        self._urls = base_urls
        self._route = route
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
                url = self._urls[turn % len(self._urls)].rstrip("/") + self._route
                try:
                    await self._poll_once(url)
                    backoff = 0.1
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
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
        self._store.offer(self._store.parse(response.content))


class CoordinationFollower(Generic[D]):
    """Follows a document's key in etcd (or the in-process backend): read, then watch.

    When the backend fails the router keeps its copy and tries again with backoff. The
    document's age is its own (``generated_at``): reading the same version again after a
    reconnect does not make it younger.
    """

    def __init__(
        self, store: DocumentStore[D], coord: Coordination, key: str = "/meridian/routing/snapshot"
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
            self._store.offer(self._store.parse(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed %s: %s", self._store.what, exc)
