"""Which sequences run in the next forward step, and how many tokens each.

Each step the scheduler first gives running sequences their tokens (decodes,
one token each, before prefill chunks), then admits waiting sequences while the
policy, ``max_num_seqs``, the token budget and the free KV blocks allow. Long
prompts are prefilled ``prefill_chunk`` tokens at a time so decodes keep moving.
When a running sequence needs a block and none is free, the most recently
admitted running sequence is preempted: its blocks are freed and it waits, at
the head of the queue, to be recomputed (mostly from the prefix cache).

A waiting sequence whose deadline passed before it was ever admitted is dropped
before its prefill (``take_expired``): computing an answer nobody waits for would
only delay the sequences behind it. A preempted sequence has started streaming and
is never dropped.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from worker.generation.kv_cache import BlockPool, prefix_block_hashes
from worker.generation.sequence import Sequence

__all__ = [
    "ContinuousPolicy",
    "Scheduled",
    "Scheduler",
    "SchedulerCounters",
    "SchedulingPolicy",
    "StaticPolicy",
    "policy_named",
]


class SchedulingPolicy(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def admit_beyond_budget(self) -> bool:
        """Whether admitted sequences may wait in the running batch for token budget."""
        ...

    def admissions(self, running: int, waiting: int, max_num_seqs: int) -> int:
        """How many waiting sequences may join the running batch now."""
        ...


@dataclass(frozen=True)
class ContinuousPolicy:
    """Iteration-level batching: new sequences join whenever there is room."""

    name: str = "continuous"
    admit_beyond_budget: bool = False

    def admissions(self, running: int, waiting: int, max_num_seqs: int) -> int:
        return max(0, min(waiting, max_num_seqs - running))


@dataclass(frozen=True)
class StaticPolicy:
    """Request-level batching: a new batch starts only when the last one is done."""

    name: str = "static"
    admit_beyond_budget: bool = True

    def admissions(self, running: int, waiting: int, max_num_seqs: int) -> int:
        return min(waiting, max_num_seqs) if running == 0 else 0


def policy_named(name: str) -> SchedulingPolicy:
    policies: dict[str, SchedulingPolicy] = {
        "continuous": ContinuousPolicy(),
        "static": StaticPolicy(),
    }
    try:
        return policies[name]
    except KeyError:
        raise ValueError(f"unknown scheduling policy {name!r}; known: {sorted(policies)}") from None


@dataclass(frozen=True)
class Scheduled:
    seq: Sequence
    num_tokens: int

    @property
    def wants_logits(self) -> bool:
        return self.seq.num_computed + self.num_tokens == len(self.seq.tokens)


@dataclass
class SchedulerCounters:
    prefix_queries: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hits: int = 0  # of which found
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    steps: int = 0
    # steps that carried decodes and prefill chunks together
    mixed_steps: int = 0
    # waiting sequences dropped before their prefill: their deadline had passed
    deadline_dropped: int = 0


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        *,
        block_size: int,
        max_num_seqs: int,
        max_batched_tokens: int,
        prefill_chunk: int,
        policy: SchedulingPolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.block_size = block_size
        # every running sequence must be able to decode in each step
        self.max_num_seqs = min(max_num_seqs, max_batched_tokens)
        self.max_batched_tokens = max_batched_tokens
        self.prefill_chunk = prefill_chunk
        self.policy = policy
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.counters = SchedulerCounters()
        self._expired: list[Sequence] = []
        self._with_deadline = 0  # waiting sequences that carry a deadline (0: no sweep)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)
        if seq.deadline is not None:
            self._with_deadline += 1

    def take_expired(self) -> list[Sequence]:
        """The sequences dropped for their deadline since the last call."""
        expired, self._expired = self._expired, []
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting sequence not started yet (None: none)."""
        if not self._with_deadline:
            return None
        deadlines = [s.deadline for s in self.waiting if s.deadline is not None and not s.admitted]
        return min(deadlines) if deadlines else None

    def _drop_expired(self) -> None:
        if not self._with_deadline:
            return
        now = self.clock()
        kept: deque[Sequence] = deque()
        for seq in self.waiting:
            if seq.deadline is not None and not seq.admitted and seq.deadline <= now:
                self._free(seq)
                self._expired.append(seq)
                self._with_deadline -= 1
                self.counters.deadline_dropped += 1
            else:
                kept.append(seq)
        self.waiting = kept

    def remove(self, seq: Sequence) -> bool:
        """Take ``seq`` out (finished or aborted) and free its blocks."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
            if seq.deadline is not None and not seq.admitted:
                self._with_deadline -= 1
        else:
            return False
        self._free(seq)
        return True

    def schedule(self) -> list[Scheduled]:
        self._drop_expired()
        budget = self.max_batched_tokens
        chosen: dict[Sequence, int] = {}
        preempted = False
        decodes = [s for s in self.running if s.remaining == 1]
        prefills = [s for s in self.running if s.remaining > 1]
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq not in self.running:
                continue  # preempted for an earlier one
            n = min(seq.remaining, self.prefill_chunk, budget)
            while not self._reserve(seq, seq.num_computed + n):
                victim = self.running[-1]
                self._preempt(victim)
                preempted = True
                budget += chosen.pop(victim, 0)
                if victim is seq:
                    break
            else:
                chosen[seq] = n
                budget -= n
        if not preempted:
            budget = self._admit(chosen, budget)
        scheduled = [Scheduled(seq, n) for seq, n in chosen.items()]
        return scheduled

    def _admit(self, chosen: dict[Sequence, int], budget: int) -> int:
        allowed = self.policy.admissions(len(self.running), len(self.waiting), self.max_num_seqs)
        for _ in range(allowed):
            seq = self.waiting[0]
            if budget == 0 and not self.policy.admit_beyond_budget:
                break
            self._match_prefix(seq)
            n = min(seq.remaining, self.prefill_chunk, budget)
            if n and not self._reserve(seq, seq.num_computed + n):
                self._free(seq)
                break
            self.waiting.popleft()
            self.running.append(seq)
            if not seq.admitted:
                seq.admitted = True
                if seq.deadline is not None:
                    self._with_deadline -= 1
                if self.pool.prefix_caching:
                    seq.cached_tokens = min(seq.num_computed, seq.prompt_len)
                    self.counters.prefix_queries += seq.prompt_len
                    self.counters.prefix_hits += seq.cached_tokens
            if n:
                chosen[seq] = n
                budget -= n
        return budget

    def commit(self, scheduled: list[Scheduled]) -> None:
        """Record that the forward pass computed the scheduled tokens."""
        self.counters.steps += 1
        kinds = {item.seq.num_computed >= item.seq.prompt_len for item in scheduled}
        if len(kinds) == 2:
            self.counters.mixed_steps += 1
        bs = self.block_size
        for item in scheduled:
            seq = item.seq
            if item.num_tokens == 1 and seq.num_computed >= seq.prompt_len:
                self.counters.decode_tokens += 1
            else:
                self.counters.prefill_tokens += item.num_tokens
            seq.num_computed += item.num_tokens
            full = seq.num_computed // bs
            if self.pool.prefix_caching and full > seq.num_registered:
                seq.block_hashes = prefix_block_hashes(
                    seq.tokens[: full * bs], bs, seq.block_hashes[:full]
                )
                for i in range(seq.num_registered, full):
                    self.pool.register(seq.block_table[i], seq.block_hashes[i])
                seq.num_registered = full

    def _match_prefix(self, seq: Sequence) -> None:
        """Start ``seq`` from the cached blocks of its longest cached prefix."""
        if not self.pool.prefix_caching or seq.block_table:
            return
        bs = self.block_size
        # at least one token must be computed, to give the logits of the next
        usable = (len(seq.tokens) - 1) // bs
        seq.block_hashes = prefix_block_hashes(
            seq.tokens[: usable * bs], bs, seq.block_hashes[:usable]
        )
        for digest in seq.block_hashes[:usable]:
            block = self.pool.lookup(digest)
            if block is None:
                break
            seq.block_table.append(block)
        seq.num_computed = len(seq.block_table) * bs
        seq.num_registered = len(seq.block_table)

    def _reserve(self, seq: Sequence, tokens: int) -> bool:
        """Give ``seq`` blocks for ``tokens`` tokens; False (nothing taken) if short."""
        needed = -(-tokens // self.block_size) - len(seq.block_table)
        if needed > self.pool.num_free:
            return False
        for _ in range(needed):
            block = self.pool.allocate()
            assert block is not None
            seq.block_table.append(block)
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._free(seq)
        self.waiting.appendleft(seq)
        self.counters.preemptions += 1

    def _free(self, seq: Sequence) -> None:
        self.pool.release_all(seq.block_table)
        seq.block_table = []
        seq.num_computed = 0
        seq.num_registered = 0
