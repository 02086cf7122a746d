"""Live coordination (keys, watches, leases, leader election) behind one interface.

Backends are chosen by configuration: ``memory://`` (in-process, the embedded
mode) or ``etcd://host:port`` (production), see :func:`open_coordination`.
"""

from __future__ import annotations

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
from meridian.coordination.election import Election, keep_alive
from meridian.coordination.memory import InProcessCoordination

__all__ = [
    "Coordination",
    "CoordinationError",
    "Election",
    "EventKind",
    "InProcessCoordination",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "Watch",
    "WatchEvent",
    "keep_alive",
    "open_coordination",
]


def open_coordination(url: str) -> Coordination:
    """``memory://`` → in-process; ``etcd://host:port`` (or bare ``host:port``) → etcd."""
    if url in ("memory", "memory://"):
        return InProcessCoordination()
    endpoint = url.removeprefix("etcd://")
    if "://" in endpoint:
        raise ValueError(f"unknown coordination URL {url!r}: use memory:// or etcd://host:port")
    from meridian.coordination.etcd import EtcdCoordination

    return EtcdCoordination(endpoint)
