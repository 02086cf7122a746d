"""Token budgets per API key: generation tokens (prompt + completion) per minute.

A request is admitted by reserving what it may use at most (its ``max_tokens`` and
an estimate of its prompt); when its answer ends, :meth:`TokenBudget.settle`
returns what it did not use (or takes what it used beyond the estimate) and adds
the real counts to the key's usage. The bucket holds a minute's tokens and refills
continuously. ``RedisTokenBudget`` keeps buckets and usage in Redis (router/buckets.py:
one atomic change on the server's clock), so router replicas share them; without
Redis, or while it cannot be reached, ``LocalTokenBudget`` keeps them in-process.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from router.buckets import LocalBuckets, RedisBuckets

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
        self._buckets = LocalBuckets()
        self.usage: dict[str, dict[str, int]] = {}

    def reserve_now(self, key: str, per_minute: float, tokens: float, now: float) -> float:
        return self._buckets.take(key, per_minute / 60.0, per_minute, tokens, now)

    async def reserve(self, key: str, per_minute: float, tokens: float) -> float:
        return self.reserve_now(key, per_minute, tokens, time.monotonic())

    async def settle(
        self, key: str, per_minute: float | None, reserved: float, prompt: int, completion: int
    ) -> None:
        if per_minute is not None:
            used = (prompt + completion) - reserved
            self._buckets.take(key, per_minute / 60.0, per_minute, used, time.monotonic(), True)
        counts = self.usage.setdefault(key, {"prompt_tokens": 0, "completion_tokens": 0})
        counts["prompt_tokens"] += prompt
        counts["completion_tokens"] += completion
        counts["requests"] = counts.get("requests", 0) + 1

    async def close(self) -> None:
        self._buckets.clear()


class RedisTokenBudget:
    """Buckets and usage shared by every router replica through Redis."""

    def __init__(self, url: str, prefix: str = "meridian:tpm:", timeout: float = 0.25) -> None:
        self._buckets = RedisBuckets(url, prefix, timeout)
        self._fallback = LocalTokenBudget()
        self.redis_ok = True
        self.last_error = ""

    async def reserve(self, key: str, per_minute: float, tokens: float) -> float:
        try:
            wait = await self._buckets.take(key, per_minute / 60.0, per_minute, tokens)
        except Exception as exc:  # Redis away: keep serving on local buckets
            self.redis_ok = False
            self.last_error = repr(exc)
            return await self._fallback.reserve(key, per_minute, tokens)
        self.redis_ok = True
        return wait

    async def settle(
        self, key: str, per_minute: float | None, reserved: float, prompt: int, completion: int
    ) -> None:
        try:
            if per_minute is not None:
                used = (prompt + completion) - reserved
                await self._buckets.take(key, per_minute / 60.0, per_minute, used, force=True)
            async with self._buckets.client.pipeline(transaction=True) as pipe:
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
        await self._buckets.close()
