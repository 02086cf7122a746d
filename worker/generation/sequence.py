"""One sequence's state, and its text as it is decoded token by token."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field

import torch

from worker.generation.kv_cache import BlockHash
from worker.generation.types import FinishReason, SamplingParams, TokenEvent

__all__ = ["IncrementalText", "Sequence"]

Decode = Callable[[Seq[int]], str]


class IncrementalText:
    """Text deltas of a growing token list, safe to send as they come.

    A delta never ends inside a multi-byte character (the decoder's ``\\ufffd``
    is held back) nor with text that could be the start of a stop string. Only
    a window of recent tokens is decoded at each step.
    """

    def __init__(self, decode: Decode, stop: Seq[str]) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # decoded so far (whole characters only)
        self._sent = 0  # characters of ``text`` already handed out

    def update(self, token_ids: Seq[int]) -> tuple[str, bool]:
        """The next delta for ``token_ids`` (the whole output so far); True once a
        stop string has appeared (the delta then ends just before it)."""
        before = self._decode(token_ids[self._prefix_offset : self._read_offset])
        after = self._decode(token_ids[self._prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            searched_from = max(0, len(self.text) - self._longest_stop + 1)
            self.text += after[len(before) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(token_ids)
            cut = self._find_stop(searched_from)
            if cut is not None:
                delta = self.text[self._sent : cut]
                self.text = self.text[:cut]
                self._sent = cut
                return delta, True
        safe = len(self.text) - self._held_back()
        delta = self.text[self._sent : safe] if safe > self._sent else ""
        self._sent = max(self._sent, safe)
        return delta, False

    def flush(self, token_ids: Seq[int]) -> str:
        """Everything not sent yet (the sequence ended for another reason)."""
        before = self._decode(token_ids[self._prefix_offset : self._read_offset])
        after = self._decode(token_ids[self._prefix_offset :])
        if len(after) > len(before):
            self.text += after[len(before) :]
        delta = self.text[self._sent :]
        self._sent = len(self.text)
        return delta

    def _find_stop(self, start: int) -> int | None:
        hits = [i for s in self._stop if (i := self.text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest tail of ``text`` that begins some stop string."""
        for n in range(min(self._longest_stop - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0


@dataclass(eq=False)
class Sequence:
    request_id: str
    tokens: list[int]  # prompt, then the generated tokens
    prompt_len: int
    params: SamplingParams
    max_len: int  # finish with "length" when len(tokens) reaches it
    generator: torch.Generator
    text: IncrementalText
    queue: asyncio.Queue[TokenEvent | BaseException] = field(default_factory=asyncio.Queue)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[BlockHash] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in the cache
    num_registered: int = 0  # leading blocks offered to the prefix cache
    cached_tokens: int = 0  # prompt tokens found in the prefix cache at first admission
    admitted: bool = False
    # time.monotonic() past which the sequence is dropped if it has not started (None: never)
    deadline: float | None = None
    finish_reason: FinishReason | None = None

    @property
    def output(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def remaining(self) -> int:
        """Known tokens whose KV is not computed yet."""
        return len(self.tokens) - self.num_computed

    def event(self, token_id: int | None, text: str) -> TokenEvent:
        return TokenEvent(
            token_id=token_id,
            text=text,
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_len,
            completion_tokens=self.completion_tokens,
            cached_tokens=self.cached_tokens,
        )
