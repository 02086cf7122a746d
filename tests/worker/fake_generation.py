"""A generation engine the transport tests can script and hold back.

It follows :class:`worker.generation.types.GenerationEngine`: one token per
character of a scripted reply (or of the prompt reversed), a gate that holds the
stream after ``hold_after`` tokens, and a record of every sequence whose iterator
was closed before it finished (what a real engine aborts).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from meridian.errors import InvalidInput, Unavailable
from worker.generation.types import EngineStats, SamplingParams, TokenEvent


class FakeEngine:
    """Token ids are code points: ``encode("ab") == [97, 98]``."""

    def __init__(self, reply: str = "Hello there, friend.", *, max_model_len: int = 64) -> None:
        self.name = "fake"
        self.max_model_len = max_model_len
        self.eos_token_id: int | None = 0
        self.reply = reply
        self.hold_after: int | None = None  # tokens sent before waiting on ``gate``
        self.gate = asyncio.Event()
        self.started = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.params: list[SamplingParams] = []
        self.prompts: list[list[int]] = []
        self.deadlines: list[float | None] = []

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False
        self.gate.set()

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"
        return self.encode(text)

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        deadline: float | None = None,
    ) -> AsyncIterator[TokenEvent]:
        if any(t < 0 for t in prompt_token_ids):
            raise InvalidInput("negative token id")
        self.params.append(params)
        self.prompts.append(list(prompt_token_ids))
        self.deadlines.append(deadline)
        return self._stream(list(prompt_token_ids), params, request_id)

    async def _stream(
        self, prompt: list[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[TokenEvent]:
        if not self.started:
            raise Unavailable("engine is not running")
        self.running.add(request_id)
        text = self.reply
        for stop in params.stop:
            if stop in text:
                text = text[: text.index(stop)]
        done = False
        try:
            for i in range(params.max_tokens):
                if self.hold_after is not None and i == self.hold_after:
                    await self.gate.wait()
                else:
                    await asyncio.sleep(0)  # one scheduler step per token
                last = i == len(text) - 1 or i == params.max_tokens - 1
                if i >= len(text):
                    done = True
                    yield TokenEvent(0, "", "stop", len(prompt), i, 0)
                    return
                reason = None
                if last:
                    reason = "stop" if i == len(text) - 1 else "length"
                done = reason is not None
                yield TokenEvent(ord(text[i]), text[i], reason, len(prompt), i + 1, 0)
                if done:
                    return
        finally:
            self.running.discard(request_id)
            (self.finished if done else self.aborted).append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.running),
            waiting=0,
            kv_blocks_used=len(self.running),
            kv_blocks_total=32,
            block_size=16,
            prefix_queries=4,
            prefix_hits=1,
            prefill_tokens=10,
            decode_tokens=20,
            preemptions=0,
        )
