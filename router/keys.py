"""End users' API keys as the router checks them: sha256 digests with their limits.

Keys are issued through the admin API (``/v1/api-keys``) and reach every router in
the keyring (:mod:`meridian.keyring`), so a router that lost the control plane still
checks keys (and their revocations up to then) from its saved keyring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from meridian.keyring import ApiKeyGrant

__all__ = ["ApiKeys", "digest"]


def digest(key: str | bytes) -> str:
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(raw).hexdigest()


class ApiKeys:
    def __init__(self, grants: Iterable[ApiKeyGrant]) -> None:
        self._by_digest = {g.sha256: g for g in grants}

    def lookup(self, presented: bytes) -> ApiKeyGrant | None:
        return self._by_digest.get(digest(presented))
