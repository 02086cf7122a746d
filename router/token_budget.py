"""Token budgets per API key: generation tokens (prompt + completion) per minute.

A request is admitted by reserving what it may use at most (its ``max_tokens`` and
an estimate of its prompt); when its answer ends, :meth:`TokenBudget.settle`
returns what it did not use (or takes what it used beyond the estimate) and adds
the real counts to the key's usage. The bucket holds a minute's tokens and refills
continuously. ``RedisTokenBudget`` keeps buckets and usage in Redis (one Lua
script per change, on the server's clock), so router replicas share them; without
Redis, or while it cannot be reached, ``LocalTokenBudget`` keeps them in-process.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

__all__ = [
    "USAGE_PREFIX",
    "LocalTokenBudget",
    "RedisTokenBudget",
    "TokenBudget",
    "estimate_tokens",
]

USAGE_PREFIX = "meridian:usage:"
DEFAULT_COMPLETION = 256  # reserved when a request names no max_tokens


def estimate_tokens(path: str, body: dict[str, Any]) -> int:
    """What an OpenAI request may use at most: its completion limit plus its prompt,
    estimated at four characters a token (token-id prompts are counted exactly)."""
    prompt: object = body.get("prompt")
    if path.endswith("/chat/completions"):
        messages = body.get("messages")
        prompt = str(messages) if isinstance(messages, list) else ""
    elif path.endswith("/embeddings"):
        prompt = body.get("input")
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompt_tokens = len(prompt)
    else:
        prompt_tokens = len(str(prompt or "")) // 4 + 1
    if path.endswith("/embeddings"):
        return prompt_tokens
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    completion = limit if isinstance(limit, int) and limit > 0 else DEFAULT_COMPLETION
    return prompt_tokens + completion


class TokenBudget(Protocol):
    async def reserve(self, key: str, per_minute: float, tokens: float) -> float:
        """Take ``tokens``; 0.0 when allowed, else seconds until they would be there."""
        ...

    async def settle(
        self, key: str, per_minute: float | None, reserved: float, prompt: int, completion: int
    ) -> None:
        """The answer ended: give back ``reserved`` less what was used; count the usage."""
        ...

    async def close(self) -> None: ...


class LocalTokenBudget:
    """In-process buckets and usage (one router; the Redis fallback)."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self.usage: dict[str, dict[str, int]] = {}

    def _level(self, key: str, per_minute: float, now: float) -> float:
        tokens, last = self._buckets.get(key, (per_minute, now))
        return min(per_minute, tokens + max(0.0, now - last) * per_minute / 60.0)

    def reserve_now(self, key: str, per_minute: float, tokens: float, now: float) -> float:
        level = self._level(key, per_minute, now)
        wait = 0.0
        if level >= tokens:
            level -= tokens
        else:
            wait = (tokens - level) * 60.0 / per_minute
        self._buckets[key] = (level, now)
        return wait

    async def reserve(self, key: str, per_minute: float, tokens: float) -> float:
        return self.reserve_now(key, per_minute, tokens, time.monotonic())

    async def settle(
        self, key: str, per_minute: float | None, reserved: float, prompt: int, completion: int
    ) -> None:
        if per_minute is not None:
            now = time.monotonic()
            level = self._level(key, per_minute, now) + reserved - (prompt + completion)
            self._buckets[key] = (min(per_minute, level), now)
        counts = self.usage.setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0})
        counts["prompt_tokens"] += prompt
        counts["completion_tokens"] += completion
        counts["requests"] = counts.get("requests", 0) + 1

    async def close(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV per_minute, change (tokens taken; negative gives back), force.
# Without force a change that does not fit is refused and the wait returned; with force
# it is applied regardless (the level may go below zero: used beyond the estimate).
_BUCKET = """
local cap = tonumber(ARGV[1])
local change = tonumber(ARGV[2])
local force = ARGV[3] == '1'
local rate = cap / 60
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = cap
  ts = now
end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local wait = 0
if force or tokens >= change then
  tokens = math.min(cap, tokens - change)
else
  wait = (change - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], 120)
return tostring(wait)
"""


class RedisTokenBudget:
    """Buckets and usage shared by every router replica through Redis."""

    def __init__(self, url: str, prefix: str = "meridian:tpm:", timeout: float = 0.25) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._script = self._client.register_script(_BUCKET)
        self._prefix = prefix
        self._fallback = LocalTokenBudget()
        self.redis_ok = True
        self.last_error = ""

    async def reserve(self, key: str, per_minute: float, tokens: float) -> float:
        try:
            raw = await self._script(keys=[self._prefix + key], args=[per_minute, tokens, 0])
        except Exception as exc:  # Redis away: keep serving on local buckets
            self.redis_ok = False
            self.last_error = repr(exc)
            return await self._fallback.reserve(key, per_minute, tokens)
        self.redis_ok = True
        return float(raw)

    async def settle(
        self, key: str, per_minute: float | None, reserved: float, prompt: int, completion: int
    ) -> None:
        try:
            if per_minute is not None:
                change = (prompt + completion) - reserved
                await self._script(keys=[self._prefix + key], args=[per_minute, change, 1])
            async with self._client.pipeline(transaction=True) as pipe:
                usage = USAGE_PREFIX + key
                pipe.hincrby(usage, "prompt_tokens", prompt)
                pipe.hincrby(usage, "completion_tokens", completion)
                pipe.hincrby(usage, "requests", 1)
                await pipe.execute()
        except Exception as exc:
            self.redis_ok = False
            self.last_error = repr(exc)
            await self._fallback.settle(key, per_minute, reserved, prompt, completion)

    async def close(self) -> None:
        await self._client.aclose()
