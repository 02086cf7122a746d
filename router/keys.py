"""End-user API keys: only sha256 digests are held, each with its rate limit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["ApiKeyPolicy", "ApiKeys", "digest"]


def digest(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyPolicy:
    name: str
    rate: float  # sustained requests per second
    burst: float


class ApiKeys:
    def __init__(self, policies: dict[str, ApiKeyPolicy]) -> None:
        self._by_digest = policies

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        data = orjson.loads(path.read_bytes())
        return cls(
            {
                k["sha256"]: ApiKeyPolicy(k["name"], float(k["rate"]), float(k["burst"]))
                for k in data.get("keys", [])
            }
        )

    def lookup(self, presented: bytes) -> ApiKeyPolicy | None:
        return self._by_digest.get(digest(presented))

    def __len__(self) -> int:
        return len(self._by_digest)
