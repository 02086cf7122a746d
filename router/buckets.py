"""Token buckets: one refill rule, kept in-process or in Redis.

A bucket holds up to ``burst`` tokens and refills at ``rate`` a second. Taking
``change`` tokens succeeds when they are there (the answer is 0.0) and otherwise
returns the seconds until they would be, leaving the bucket as it was; with
``force`` the change is applied regardless, so the level may fall below zero (a
use beyond what was reserved) and a negative change gives tokens back. Request
rate limits and token-per-minute budgets are both such buckets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LocalBuckets", "RedisBuckets"]


class LocalBuckets:
    """In-process buckets (one process; the embedded mode and the Redis fallback)."""

    def __init__(self) -> None:
        self._levels: dict[str, tuple[float, float]] = {}

    def take(
        self, key: str, rate: float, burst: float, change: float, now: float, force: bool = False
    ) -> float:
        tokens, last = self._levels.get(key, (burst, now))
        tokens = min(burst, tokens + max(0.0, now - last) * rate)
        wait = 0.0
        if force or tokens >= change:
            tokens = min(burst, tokens - change)
        else:
            wait = (change - tokens) / rate
        self._levels[key] = (tokens, now)
        return wait

    def clear(self) -> None:
        self._levels.clear()


# KEYS[1] bucket; ARGV rate, burst, change, force. Uses the Redis server's clock so that
# every replica shares one time line. Returns the wait in seconds as a string (0 = taken).
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local change = tonumber(ARGV[3])
local force = ARGV[4] == '1'
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
if force or tokens >= change then
  tokens = math.min(burst, tokens - change)
else
  wait = (change - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisBuckets:
    """Buckets shared by every router replica, changed atomically by one Lua script.

    Errors reach the caller, which decides how to keep serving without Redis.
    """

    def __init__(self, url: str, prefix: str, timeout: float = 0.25) -> None:
        import redis.asyncio as redis

        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self.client.register_script(_TAKE)
        self._prefix = prefix

    async def take(
        self, key: str, rate: float, burst: float, change: float, force: bool = False
    ) -> float:
        raw = await self._script(
            keys=[self._prefix + key], args=[rate, burst, change, 1 if force else 0]
        )
        return float(raw)

    async def close(self) -> None:
        await self.client.aclose()
