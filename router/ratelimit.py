"""Per-key rate limits as token buckets.

``RedisRateLimiter`` keeps the buckets in Redis, updated atomically by one Lua
script on the server's clock, so every router replica shares them. When Redis
cannot be reached the router keeps serving with a local bucket per key (static
stability) and says so in its health details. ``LocalRateLimiter`` is the
embedded backend.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["LocalRateLimiter", "RateLimiter", "RedisRateLimiter"]


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens; return 0.0 when allowed, else seconds until it would be."""
        ...

    async def close(self) -> None: ...


class LocalRateLimiter:
    """In-process token buckets (one process; the embedded mode and the Redis fallback)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        return self.acquire_now(key, rate, burst, cost, time.monotonic())

    def acquire_now(self, key: str, rate: float, burst: float, cost: float, now: float) -> float:
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / rate
        self._buckets[key] = (tokens, now)
        return wait

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV rate, burst, cost. Uses the Redis server's clock so that every
# replica shares one time line. Returns the wait in seconds as a string (0 = allowed).
_TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Token buckets shared by all router replicas through Redis."""

    def __init__(self, url: str, prefix: str = "meridian:rl:", timeout: float = 0.25) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._client.register_script(_TOKEN_BUCKET)
        self._prefix = prefix
        self._fallback = LocalRateLimiter()
        self.redis_ok = True
        self.last_error = ""

    async def acquire(self, key: str, rate: float, burst: float, cost: float = 1.0) -> float:
        try:
            raw = await self._script(keys=[self._prefix + key], args=[rate, burst, cost])
        except Exception as exc:  # Redis away: keep serving on local buckets
            self.redis_ok = False
            self.last_error = repr(exc)
            return await self._fallback.acquire(key, rate, burst, cost)
        self.redis_ok = True
        return float(raw)

    async def close(self) -> None:
        await self._client.aclose()
