"""Coordination on etcd v3 through ``aetcd`` (async gRPC)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import aetcd
import aetcd.exceptions

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

__all__ = ["EtcdCoordination"]


def _kv(raw: Any) -> KeyValue:
    return KeyValue(
        key=bytes(raw.key).decode(),
        value=bytes(raw.value),
        create_revision=int(raw.create_revision),
        mod_revision=int(raw.mod_revision),
        lease=int(raw.lease),
    )


class _EtcdLease(Lease):
    def __init__(self, client: aetcd.Client, lease_id: int, ttl: float) -> None:
        self.id = lease_id
        self.ttl = ttl
        self._client = client

    async def refresh(self) -> None:
        try:
            reply = await self._client.refresh_lease(self.id)
        except aetcd.ClientError as exc:
            raise CoordinationError(f"lease refresh failed: {exc}") from exc
        if reply is None or reply.TTL <= 0:
            raise LeaseExpired(f"lease {self.id:x} expired or was revoked")

    async def revoke(self) -> None:
        try:
            await self._client.revoke_lease(self.id)
        except aetcd.ClientError as exc:
            if "not found" not in str(exc):
                raise CoordinationError(f"lease revoke failed: {exc}") from exc


class _EtcdWatch(Watch):
    def __init__(self, watch: Any) -> None:
        self._watch = watch
        self._closed = False

    async def _iterate(self) -> AsyncIterator[WatchEvent]:
        try:
            async for event in self._watch:
                kind = EventKind.PUT if event.kind == aetcd.EventKind.PUT else EventKind.DELETE
                yield WatchEvent(
                    kind=kind,
                    key=bytes(event.kv.key).decode(),
                    value=bytes(event.kv.value) if kind == EventKind.PUT else b"",
                    revision=int(event.kv.mod_revision),
                )
        except aetcd.ClientError as exc:
            raise CoordinationError(f"watch failed: {exc}") from exc
        if not self._closed:
            raise CoordinationError("watch ended: etcd connection lost")

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self._iterate()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                await self._watch.cancel()
            except (aetcd.ClientError, RuntimeError, AttributeError):
                pass  # the stream is already gone


class EtcdCoordination(Coordination):
    """``endpoint`` is ``host:port`` of an etcd client URL."""

    def __init__(self, endpoint: str, *, timeout: float = 5.0) -> None:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint must be host:port, got {endpoint!r}")
        self.endpoint = endpoint
        self._client = aetcd.Client(host=host, port=int(port), timeout=math.ceil(timeout))

    async def put(self, key: str, value: bytes, *, lease: Lease | None = None) -> int:
        try:
            result = await self._client.put(key.encode(), value, lease=lease.id if lease else None)
        except aetcd.ClientError as exc:
            raise self._error("put", exc) from exc
        return int(result.header.revision)

    async def put_if_absent(self, key: str, value: bytes, *, lease: Lease | None = None) -> bool:
        k = key.encode()
        tx = self._client.transactions
        try:
            succeeded, _ = await self._client.transaction(
                compare=[tx.create(k) == 0],
                success=[tx.put(k, value, lease=lease.id if lease else None)],
                failure=[],
            )
        except aetcd.ClientError as exc:
            raise self._error("transaction", exc) from exc
        return bool(succeeded)

    async def get(self, key: str) -> KeyValue | None:
        try:
            result = await self._client.get(key.encode())
        except aetcd.ClientError as exc:
            raise self._error("get", exc) from exc
        return None if result is None else _kv(result)

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        try:
            result = await self._client.get_prefix(prefix.encode())
        except aetcd.ClientError as exc:
            raise self._error("get", exc) from exc
        return [_kv(kv) for kv in result.kvs], int(result.header.revision)

    async def delete(self, key: str) -> bool:
        try:
            result = await self._client.delete(key.encode())
        except aetcd.ClientError as exc:
            raise self._error("delete", exc) from exc
        return result is not None and bool(result.deleted)

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int | None = None
    ) -> Watch:
        try:
            if prefix:
                raw = await self._client.watch_prefix(key.encode(), start_revision=start_revision)
            else:
                raw = await self._client.watch(key.encode(), start_revision=start_revision)
        except aetcd.ClientError as exc:
            raise self._error("watch", exc) from exc
        return _EtcdWatch(raw)

    async def grant_lease(self, ttl: float) -> Lease:
        try:
            lease = await self._client.lease(math.ceil(ttl))
        except aetcd.ClientError as exc:
            raise self._error("lease grant", exc) from exc
        return _EtcdLease(self._client, int(lease.id), float(lease.ttl))

    async def close(self) -> None:
        await self._client.close()

    def _error(self, what: str, exc: Exception) -> CoordinationError:
        if "lease not found" in str(exc):
            return LeaseExpired(f"etcd {what}: the lease expired or was revoked")
        return CoordinationError(f"etcd {what} at {self.endpoint} failed: {exc}")
