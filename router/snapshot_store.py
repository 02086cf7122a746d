"""The router's copies of what the control plane publishes, kept on disk for static stability.

Two versioned documents: the routing snapshot and the keyring of end users' API keys.
The router routes (and checks keys) on the last good version whatever happens to the
control plane, etcd or Redis. Every accepted version is written atomically to disk,
and a router that starts with no reachable control plane starts from those files.
``confirmed_age()`` says how long ago a source last confirmed the document is current
(a new version, or a long-poll that found nothing new).
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

    def to_json(self) -> bytes: ...


D = TypeVar("D", bound=Document)


class DocumentStore(Generic[D]):
    def __init__(self, path: Path | None, parse: Callable[[bytes], D], what: str) -> None:
        self._path = path
        self._parse = parse
        self.what = what
        self._current: D | None = None
        self._confirmed_at: float | None = None
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
        self._current = document
        return document

    def offer(self, document: D) -> bool:
        """Accept ``document`` if it is newer than the current one; persist it."""
        self.confirm()
        if self._current is not None and document.version <= self._current.version:
            return False
        self._current = document
        if self._path is not None:
            self._save(document)
        self.changed.set()
        self.changed = asyncio.Event()
        return True

    def confirm(self) -> None:
        """A source confirmed that the current version is the newest it has."""
        self._confirmed_at = time.monotonic()

    def confirmed_age(self) -> float | None:
        """Seconds since a source last confirmed the document; None if never (saved file)."""
        if self._confirmed_at is None:
            return None
        return time.monotonic() - self._confirmed_at

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

    When the backend fails the router keeps its copy and tries again with backoff;
    ``confirm`` is called on every event and read so the document's age stays honest.
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
