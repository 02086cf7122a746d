"""Per-key rate limits as token buckets.

``RedisRateLimiter`` keeps the buckets in Redis, updated atomically on the
server's clock (router/buckets.py), so every router replica shares them. When Redis
cannot be reached the router keeps serving with a local bucket per key (static
stability) and says so in its health details. ``LocalRateLimiter`` is the
embedded backend.
"""

from __future__ import annotations

import time
from typing import Protocol

from router.buckets import LocalBuckets, RedisBuckets

__all__ = ["LocalRateLimiter", "RateLimiter", "RedisRateLimiter"]


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0.0 when allowed, else seconds until it would be."""
        ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    """In-process token buckets (one process; the embedded mode and the Redis fallback)."""

    def __init__(self) -> None:
        self._buckets = LocalBuckets()

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        return self.acquire_now(key, rate, burst, cost, time.monotonic())

    def acquire_now(self, key: str, rate: float, burst: float, cost: float, now: float) -> float:
        return self._buckets.take(key, rate, burst, cost, now)

    async def close(self) -> None:
        self._buckets.clear()


class RedisRateLimiter:
    """Token buckets shared by all router replicas through Redis."""

    def __init__(self, url: str, prefix: str = "meridian:rl:", timeout: float = 0.25) -> None:
        self._buckets = RedisBuckets(url, prefix, timeout)
        self._fallback = LocalRateLimiter()
        self.redis_ok = True
        self.last_error = ""

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        try:
            wait = await self._buckets.take(key, rate, burst, cost)
        except Exception as exc:  # Redis away: keep serving on local buckets
            self.redis_ok = False
            self.last_error = repr(exc)
            return await self._fallback.acquire(key, rate, burst, cost)
        self.redis_ok = True
        return wait

    async def close(self) -> None:
        await self._buckets.close()
