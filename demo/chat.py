"""Clients in world cities streaming chat completions through the router, and what they saw.

Each stream is the HTTP the ``openai`` client sends (``POST /v1/chat/completions``,
``stream: true``, server-sent events). A stream is complete when it ends with
``[DONE]`` after a chunk with a finish reason and, when that reason is ``length``,
a usage that counts every token asked for; anything else (an error status or
event, a broken connection, a missing finish reason or token) is a broken stream.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter, defaultdict
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import orjson

from demo.geography import City

__all__ = ["ChatStats", "ChatTraffic"]

QUESTIONS = (
    "Return the number of items in a container.",
    "How do I open a file for reading?",
    "Explain what a context manager does.",
    "What does this function return when the list is empty?",
    "Convert a string to an integer, or raise an error.",
    "Describe how the iterator protocol works.",
)


@dataclass
class ChatStats:
    """A city's streams: time to first token, and each stream's rate after its first
    token (tokens/s in the tables is the median of those rates)."""

    ttft_ms: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    regions: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    broken: int = 0
    continued: int = 0  # began in the region that was killed, finished elsewhere
    last_error: str = ""

    def summary(self) -> dict[str, object]:
        ttft = np.array(self.ttft_ms) if self.ttft_ms else np.zeros(1)
        rate = np.array(self.tokens_per_s) if self.tokens_per_s else np.zeros(1)
        return {
            "streams": len(self.ttft_ms) + self.broken,
            "broken": self.broken,
            "continued": self.continued,
            "tokens": self.tokens,
            "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 1),
            "ttft_p99_ms": round(float(np.percentile(ttft, 99)), 1),
            "tokens_per_s": round(float(np.median(rate)), 1),
            "regions": dict(self.regions.most_common()),
            "last_error": self.last_error,
        }


class Broken(Exception):
    pass


class ChatTraffic:
    """One task per city, starting ``rate`` streams/s (Poisson) until :meth:`stop`.

    Streams count in the stats of the phase they began in (:attr:`phase`)."""

    def __init__(
        self,
        router_url: str,
        cities: Sequence[City],
        rate: float,
        model: str,
        ca_file: str | None,
        api_key: str | None = None,
        max_tokens: int = 48,
        seed: int = 2,
    ) -> None:
        self.cities = cities
        self.rate = rate
        self.model = model
        self.max_tokens = max_tokens
        self.phase = "warm-up"
        self.stats: dict[str, dict[str, ChatStats]] = defaultdict(lambda: defaultdict(ChatStats))
        self.killed: tuple[str, float] | None = None  # region, when
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else False
        )
        self._client = httpx.AsyncClient(
            base_url=router_url,
            headers={"authorization": f"Bearer {api_key}"} if api_key else None,
            verify=verify,
            timeout=httpx.Timeout(60.0, connect=5.0),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=50),
        )
        self._rng = random.Random(seed)
        self._stopping = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()

    async def _one(
        self, city: City, max_tokens: int = 0, first: asyncio.Future[str] | None = None
    ) -> None:
        stats = self.stats[self.phase][city.name]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": self._rng.choice(QUESTIONS)}],
            "max_tokens": max_tokens or self.max_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        started = time.monotonic()
        try:
            region, first_at, tokens = await self._stream(city, body, first)
        except Exception as exc:  # whatever went wrong, the stream broke
            stats.broken += 1
            stats.last_error = str(exc) or repr(exc)
            return
        finally:
            if first is not None and not first.done():
                first.set_result("")
        ended = time.monotonic()
        stats.ttft_ms.append((first_at - started) * 1000.0)
        if tokens > 1 and ended > first_at:
            stats.tokens_per_s.append((tokens - 1) / (ended - first_at))
        stats.tokens += tokens
        stats.regions[region] += 1
        if (
            self.killed is not None
            and region == self.killed[0]
            and started < self.killed[1] < ended
        ):
            stats.continued += 1

    async def _stream(
        self, city: City, body: dict[str, Any], on_first: asyncio.Future[str] | None
    ) -> tuple[str, float, int]:
        headers = {"x-meridian-client-location": f"{city.lat},{city.lon}"}
        first = 0.0
        finish: str | None = None
        usage: dict[str, Any] = {}
        done = False
        async with self._client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as r:
            if r.status_code != 200:
                raise Broken(f"{r.status_code}: {(await r.aread())[:200]!r}")
            region = r.headers.get("x-meridian-region", "?")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                chunk = orjson.loads(data)
                if "error" in chunk:
                    raise Broken(f"error event: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    if not first and (choice.get("delta") or {}).get("content"):
                        first = time.monotonic()
                        if on_first is not None and not on_first.done():
                            on_first.set_result(region)
                    finish = choice.get("finish_reason") or finish
                usage = chunk.get("usage") or usage
        tokens = int(usage.get("completion_tokens", 0))
        if not done or finish is None or not first:
            raise Broken(f"incomplete stream (done={done}, finish_reason={finish})")
        if finish == "length" and tokens != body["max_tokens"]:
            raise Broken(f"{tokens} of {body['max_tokens']} tokens")
        return region, first, tokens

    async def _city_loop(self, city: City) -> None:
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self._rng.expovariate(self.rate)
                )
            except TimeoutError:
                self._spawn(self._one(city))

    def _spawn(self, stream: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(stream)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def streaming(self, max_tokens: int, timeout: float = 30.0) -> dict[str, str]:
        """Start a long stream from every city and return once each has its first
        token (or has ended): city -> the region streaming it now."""
        loop = asyncio.get_running_loop()
        firsts: dict[str, asyncio.Future[str]] = {}
        for city in self.cities:
            firsts[city.name] = loop.create_future()
            self._spawn(self._one(city, max_tokens, firsts[city.name]))
        await asyncio.wait(firsts.values(), timeout=timeout)
        return {name: f.result() for name, f in firsts.items() if f.done() and f.result()}

    async def run(self) -> None:
        """Stream until :meth:`stop`; then wait for every stream begun (each is counted)."""
        await asyncio.gather(*(self._city_loop(c) for c in self.cities))
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await self._client.aclose()
