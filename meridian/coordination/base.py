"""The live-coordination interface: keys, watches, leases.

Two backends implement it: :mod:`meridian.coordination.memory` (one process,
the embedded mode) and :mod:`meridian.coordination.etcd` (production). Leader
election is built once on top of these primitives in
:mod:`meridian.coordination.election`, so both backends elect the same way.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType

__all__ = [
    "Coordination",
    "CoordinationError",
    "EventKind",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "Watch",
    "WatchEvent",
]


class CoordinationError(Exception):
    """The backend could not carry out an operation (unreachable, closed, ...)."""


class LeaseExpired(CoordinationError):
    """A lease could not be refreshed: it expired or was revoked."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


class EventKind(enum.StrEnum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: EventKind
    key: str
    value: bytes  # empty for deletions
    revision: int  # the revision of the change


class Lease(abc.ABC):
    """A time-to-live shared by keys; they vanish when it expires or is revoked."""

    id: int
    ttl: float

    @abc.abstractmethod
    async def refresh(self) -> None:
        """Extend the lease by its TTL; raises :class:`LeaseExpired` when it is gone."""

    @abc.abstractmethod
    async def revoke(self) -> None:
        """End the lease now, deleting its keys. Revoking a dead lease is not an error."""


class Watch(abc.ABC):
    """Changes to one key or a prefix, as an async iterator; close it when done.

    Use as ``async with coord.watch(key) as events: async for event in events``.
    """

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[WatchEvent]: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Coordination(abc.ABC):
    """Keys are ``str`` paths like ``/meridian/routing/snapshot``; values are bytes."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        """Store ``value`` under ``key``; returns the new revision."""

    @abc.abstractmethod
    async def put_if_absent(self, key: str, value: bytes, *, lease: Lease | None = None) -> bool:
        """Create ``key`` only if it does not exist (one transaction); True when created."""

    @abc.abstractmethod
    async def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` (sorted by key) and the store's current revision."""

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Delete ``key``; True when it existed."""

    @abc.abstractmethod
    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None
    ) -> Watch:
        """Changes to ``key`` (or every key under it with ``prefix``), from ``start_revision``
        when given (inclusive), else from now."""

    @abc.abstractmethod
    async def grant_lease(self, ttl: float) -> Lease: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
