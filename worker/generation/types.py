"""The contract between the generation engine and the transports that serve it.

Transports (the OpenAI routes, the OIP generate routes, gRPC ``ModelStreamInfer``)
turn a request into prompt token ids and :class:`SamplingParams`, call
:meth:`GenerationEngine.generate`, and encode each :class:`TokenEvent` as it comes.
Closing the iterator early (a client that went away) aborts the sequence: its KV
blocks are freed within one scheduler step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["EngineStats", "FinishReason", "GenerationEngine", "SamplingParams", "TokenEvent"]

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens. ``temperature == 0`` is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    # 0: no top-k cut.
    top_k: int = 0
    # The same seed, prompt and settings give the same tokens.
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class TokenEvent:
    """What one scheduler step produced for one sequence.

    ``text`` is the newly decoded text (it may be empty while a multi-byte
    character or a possible stop string is held back). The last event of a
    sequence has ``finish_reason`` set.
    """

    token_id: int | None
    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    # prompt tokens whose KV came from the prefix cache
    cached_tokens: int


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    block_size: int
    # prompt tokens looked up in the prefix cache, and of those the ones found
    # (counted once per sequence, at its first admission)
    prefix_queries: int
    prefix_hits: int
    prefill_tokens: int
    decode_tokens: int
    preemptions: int

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0


class GenerationEngine(Protocol):
    """One generative model behind one continuous-batching loop."""

    name: str
    max_model_len: int
    eos_token_id: int | None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, token_ids: Sequence[int]) -> str: ...

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of a chat (``[{"role": ..., "content": ...}]``) through the
        tokenizer's chat template, ending where the assistant's answer starts."""
        ...

    def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        deadline: float | None = None,
    ) -> AsyncIterator[TokenEvent]:
        """Token events of one sequence; one that has not started by ``deadline``
        (``time.monotonic()``) ends with :class:`~meridian.errors.UpstreamTimeout`."""
        ...

    def stats(self) -> EngineStats: ...
