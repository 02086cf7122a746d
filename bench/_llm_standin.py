"""A stand-in generation engine with simulated step times, to check the harness.

It schedules like the real engine (continuous or static batching, a sequence cap,
a prefill token budget per step, a prefix cache of full blocks) but computes
nothing: each step sleeps ``base + per_token * prefill tokens + per_seq * decoding
sequences``. ``python -m bench.llm --dry`` runs the whole benchmark on it; its
figures say nothing about the real engine and are never written to the docs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from worker.generation.types import EngineStats, SamplingParams, TokenEvent


@dataclass
class _Seq:
    prompt: list[int]
    params: SamplingParams
    queue: asyncio.Queue[TokenEvent] = field(default_factory=asyncio.Queue)
    computed: int = 0
    cached: int = 0
    generated: int = 0
    done: bool = False


class StandInEngine:
    def __init__(
        self,
        *,
        policy: str,
        max_num_seqs: int,
        max_batched_tokens: int,
        block_size: int,
        prefix_caching: bool,
        max_model_len: int = 512,
        base_s: float = 0.004,
        per_token_s: float = 0.00005,
        per_seq_s: float = 0.0002,
    ) -> None:
        self.name = "stand-in"
        self.max_model_len = max_model_len
        self.eos_token_id: int | None = None
        self._policy, self._max_seqs, self._budget = policy, max_num_seqs, max_batched_tokens
        self._block, self._prefix = block_size, prefix_caching
        self._cost = (base_s, per_token_s, per_seq_s)
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._cache: set[tuple[int, ...]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._counts = {"queries": 0, "hits": 0, "prefill": 0, "decode": 0}

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t % 256 for t in token_ids).decode(errors="replace")

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        return self.encode("".join(m["content"] for m in messages))

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        seq = _Seq(list(prompt_token_ids), params)
        self._waiting.append(seq)
        self._wake.set()
        try:
            while True:
                ev = await seq.queue.get()
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            seq.done = True

    def stats(self) -> EngineStats:
        c = self._counts
        return EngineStats(
            running=len(self._running),
            waiting=len(self._waiting),
            kv_blocks_used=0,
            kv_blocks_total=0,
            block_size=self._block,
            prefix_queries=c["queries"],
            prefix_hits=c["hits"],
            prefill_tokens=c["prefill"],
            decode_tokens=c["decode"],
            preemptions=0,
        )

    def _admit(self, seq: _Seq) -> None:
        if self._prefix:
            full = (len(seq.prompt) - 1) // self._block
            for b in range(full):
                self._counts["queries"] += 1
                if tuple(seq.prompt[: (b + 1) * self._block]) not in self._cache:
                    break
                self._counts["hits"] += 1
                seq.computed = seq.cached = (b + 1) * self._block
        self._running.append(seq)

    async def _loop(self) -> None:
        while True:
            self._running = [s for s in self._running if not s.done]
            admit = not self._running if self._policy == "static" else True
            while admit and self._waiting and len(self._running) < self._max_seqs:
                self._admit(self._waiting.pop(0))
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            budget, prefill, decoding = self._budget, 0, []
            for s in self._running:
                left = len(s.prompt) - s.computed
                if left > 0 and budget > 0:
                    take = min(left, budget)
                    s.computed += take
                    budget -= take
                    prefill += take
                    if s.computed == len(s.prompt):
                        decoding.append(s)
                elif left == 0:
                    decoding.append(s)
            base, per_token, per_seq = self._cost
            await asyncio.sleep(base + per_token * prefill + per_seq * len(decoding))
            self._counts["prefill"] += prefill
            self._counts["decode"] += len(decoding)
            for s in decoding:
                if self._prefix:
                    for b in range(len(s.prompt) // self._block):
                        self._cache.add(tuple(s.prompt[: (b + 1) * self._block]))
                s.generated += 1
                last = s.generated >= s.params.max_tokens
                s.queue.put_nowait(
                    TokenEvent(
                        token_id=s.generated,
                        text="x",
                        finish_reason="length" if last else None,
                        prompt_tokens=len(s.prompt),
                        completion_tokens=s.generated,
                        cached_tokens=s.cached,
                    )
                )
                s.done = s.done or last
