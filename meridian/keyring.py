"""End users' API keys as routers check them: the keyring document.

The control plane's leader publishes a new keyring whenever a key is issued,
changed or revoked; routers follow it (etcd watch or the HTTP long-poll on
``/v1/routing/api-keys``) and keep the last one on disk, as they do the routing
snapshot. It is kept apart from the snapshot, which is republished whenever load
changes: keys change rarely and may be many. Only sha256 digests travel, never keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

__all__ = ["PRIORITIES", "ApiKeyGrant", "ApiKeyring", "Priority"]

Priority = Literal["interactive", "batch"]
# request classes, first the one admitted longest under overload
PRIORITIES: tuple[Priority, ...] = ("interactive", "batch")


@dataclass(frozen=True, slots=True)
class ApiKeyGrant:
    """One end user's key: its sha256, its token bucket, the models it may call."""

    name: str
    sha256: str
    rate_per_s: float
    burst: float
    models: tuple[str, ...] = ()  # empty: every model
    # generation tokens (prompt + completion) per minute; None: no token budget
    tokens_per_minute: float | None = None
    # the request class under overload: ``batch`` is refused first
    priority: Priority = "interactive"
    # the deadline of a request that carries none (x-meridian-deadline-ms); None: no deadline
    deadline_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyring:
    """Every active key. ``version`` only ever grows."""

    version: int
    generated_at: float  # wall-clock seconds since the epoch
    keys: tuple[ApiKeyGrant, ...] = ()

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKeyring:
        return cls(
            version=int(data["version"]),
            generated_at=float(data["generated_at"]),
            keys=tuple(
                ApiKeyGrant(
                    name=str(k["name"]),
                    sha256=str(k["sha256"]),
                    rate_per_s=float(k["rate_per_s"]),
                    burst=float(k["burst"]),
                    models=tuple(k.get("models", ())),
                    tokens_per_minute=(
                        None
                        if k.get("tokens_per_minute") is None
                        else float(k["tokens_per_minute"])
                    ),
                    priority=_priority(k.get("priority")),
                    deadline_ms=None if k.get("deadline_ms") is None else float(k["deadline_ms"]),
                )
                for k in data.get("keys", ())
            ),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKeyring:
        return cls.from_dict(orjson.loads(raw))


def _priority(value: object) -> Priority:
    """A key's class; one this router does not know (a newer control plane) is interactive."""
    return "batch" if value == "batch" else "interactive"
