"""The generation engine: one model, one owned batching loop.

The loop is an asyncio task. Each iteration hands the requests that arrived
(and those whose consumers went away) to one step that runs in a worker thread:
schedule, one forward pass over the ragged batch, sampling, detokenization.
The step's token events are then put, on the event loop, into each sequence's
queue, which its :meth:`Engine.generate` iterator drains.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from meridian.errors import InvalidInput, Unavailable, UpstreamTimeout
from meridian.eventwait import wait_event
from worker.generation.runner import ModelRunner, StepInput
from worker.generation.sampling import make_generator, sample_token
from worker.generation.scheduler import Scheduler, SchedulerCounters
from worker.generation.sequence import IncrementalText, Sequence
from worker.generation.types import EngineStats, SamplingParams, TokenEvent

__all__ = ["Engine", "Tokenizer"]

log = logging.getLogger(__name__)


class Tokenizer:
    """Text <-> token ids, and the chat template, of one model."""

    def __init__(
        self,
        encode: Callable[[str], list[int]],
        decode: Callable[[Seq[int]], str],
        chat: Callable[[Seq[dict[str, str]]], list[int]],
    ) -> None:
        self.encode = encode
        self.decode = decode
        self.chat = chat


class Engine:
    """Continuous batching over a paged KV cache (see ``docs/generation.md``)."""

    def __init__(
        self,
        *,
        name: str,
        runner: ModelRunner,
        scheduler: Scheduler,
        tokenizer: Tokenizer,
        max_model_len: int,
        eos_token_ids: Seq[int],
    ) -> None:
        self.name = name
        self.max_model_len = max_model_len
        self.eos_token_id: int | None = eos_token_ids[0] if eos_token_ids else None
        self._eos = frozenset(eos_token_ids)
        self._runner = runner
        self._scheduler = scheduler
        self._tokenizer = tokenizer
        self._vocab_size = runner.model.shape.vocab_size
        self._inbox: list[Sequence] = []
        self._aborts: list[Sequence] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"gen-{self.name}")
        self._task = asyncio.create_task(self._run(), name=f"generation-{self.name}")

    async def stop(self) -> None:
        """Finish the step in flight, end every sequence with ``abort``, stop the loop."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        sched = self._scheduler
        for seq in [*sched.running, *sched.waiting, *self._inbox]:
            sched.remove(seq)
            seq.finish_reason = "abort"
            seq.queue.put_nowait(seq.event(None, ""))
        self._inbox.clear()
        self._aborts.clear()
        assert self._executor is not None
        self._executor.shutdown(wait=True)
        self._executor = None

    @property
    def steps(self) -> int:
        """Forward steps run so far."""
        return self._scheduler.counters.steps

    def counters(self) -> SchedulerCounters:
        """A copy of the scheduler's counters (steps, mixed steps, tokens, ...)."""
        return replace(self._scheduler.counters)

    # -- the contract ------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text)

    def decode(self, token_ids: Seq[int]) -> str:
        return self._tokenizer.decode(token_ids)

    def chat_prompt(self, messages: Seq[dict[str, str]]) -> list[int]:
        return self._tokenizer.chat(messages)

    def generate(
        self,
        prompt_token_ids: Seq[int],
        params: SamplingParams,
        request_id: str,
        deadline: float | None = None,
    ) -> AsyncIterator[TokenEvent]:
        """Token events of one sequence; raises :class:`InvalidInput` at once for bad input.
        A sequence still waiting at ``deadline`` (``time.monotonic()``) is dropped before
        its prefill: the iterator raises :class:`UpstreamTimeout` (504)."""
        prompt = [int(t) for t in prompt_token_ids]
        self._validate(prompt, params)
        seq = Sequence(
            request_id=request_id,
            tokens=prompt,
            prompt_len=len(prompt),
            params=params,
            max_len=min(self.max_model_len, len(prompt) + params.max_tokens),
            generator=make_generator(params.seed),
            text=IncrementalText(self._tokenizer.decode, params.stop),
            deadline=deadline,
        )
        return self._stream(seq)

    def stats(self) -> EngineStats:
        sched, pool = self._scheduler, self._scheduler.pool
        c = sched.counters
        return EngineStats(
            running=len(sched.running),
            waiting=len(sched.waiting) + len(self._inbox),
            kv_blocks_used=pool.num_used,
            kv_blocks_total=pool.num_blocks,
            block_size=sched.block_size,
            prefix_queries=c.prefix_queries,
            prefix_hits=c.prefix_hits,
            prefill_tokens=c.prefill_tokens,
            decode_tokens=c.decode_tokens,
            preemptions=c.preemptions,
        )

    # -- internals ---------------------------------------------------------

    def _validate(self, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise InvalidInput("the prompt has no tokens")
        if len(prompt) >= self.max_model_len:
            raise InvalidInput(
                f"the prompt has {len(prompt)} tokens; this model takes at most "
                f"{self.max_model_len - 1} so that one can be generated"
            )
        bad = [t for t in prompt if not 0 <= t < self._vocab_size]
        if bad:
            raise InvalidInput(
                f"token id {bad[0]} is outside the vocabulary (0..{self._vocab_size - 1})"
            )
        if params.max_tokens < 1:
            raise InvalidInput("max_tokens must be at least 1")
        if params.temperature < 0:
            raise InvalidInput("temperature must be >= 0")
        if not 0.0 < params.top_p <= 1.0:
            raise InvalidInput("top_p must be in (0, 1]")
        if params.top_k < 0:
            raise InvalidInput("top_k must be >= 0 (0: no cut)")

    async def _stream(self, seq: Sequence) -> AsyncIterator[TokenEvent]:
        if self._task is None or self._stopping:
            raise Unavailable(f"generation engine {self.name!r} is not running")
        self._inbox.append(seq)
        self._wake.set()
        done = False
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    done = True
                    raise item
                if item.finish_reason is not None:
                    done = True
                yield item
                if done:
                    return
        finally:
            if not done:
                self._aborts.append(seq)
                self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            if not (self._inbox or self._aborts or self._scheduler.has_work()):
                self._wake.clear()
                await self._wake.wait()
                continue
            adds, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
            try:
                events = await loop.run_in_executor(self._executor, self._step, adds, aborts)
            except Exception as exc:
                log.exception("generation step failed for %s", self.name)
                self._fail_all(exc)
                continue
            if events is None:
                # nothing could run (no arrivals can be admitted): wait for news, or
                # for the next waiting sequence's deadline to drop it
                self._wake.clear()
                if not (self._inbox or self._aborts):
                    due = self._scheduler.next_deadline()
                    if due is None:
                        await self._wake.wait()
                    else:
                        await wait_event(self._wake, max(0.0, due - time.monotonic()) + 0.001)
                continue
            for seq, event in events:
                seq.queue.put_nowait(event)

    def _fail_all(self, exc: Exception) -> None:
        sched = self._scheduler
        for seq in [*sched.running, *sched.waiting]:
            sched.remove(seq)
            seq.queue.put_nowait(Unavailable(f"generation failed: {type(exc).__name__}"))

    def _step(
        self, adds: list[Sequence], aborts: list[Sequence]
    ) -> list[tuple[Sequence, TokenEvent | BaseException]] | None:
        """One scheduler step, in the engine's thread; ``None`` if nothing could run."""
        sched = self._scheduler
        for seq in adds:
            sched.add(seq)
        for seq in aborts:  # after the adds: a consumer may leave before its first step
            sched.remove(seq)
        scheduled = sched.schedule()
        events: list[tuple[Sequence, TokenEvent | BaseException]] = [
            (seq, self._expired(seq)) for seq in sched.take_expired()
        ]
        if not scheduled:
            # waiting sequences that cannot start while nothing runs need news
            # (an abort or arrival); anything else resolves at the next step
            if events:
                return events
            return None if sched.waiting and not sched.running else []
        inputs = [
            StepInput(
                token_ids=s.seq.tokens[s.seq.num_computed : s.seq.num_computed + s.num_tokens],
                start=s.seq.num_computed,
                block_table=list(s.seq.block_table),
                wants_logits=s.wants_logits,
            )
            for s in scheduled
        ]
        logits = self._runner.forward(inputs)
        sampling = [s.seq for s in scheduled if s.wants_logits]
        sched.commit(scheduled)
        for row, seq in zip(logits, sampling, strict=True):
            token = sample_token(row, seq.params, seq.generator)
            events.append((seq, self._advance(seq, token)))
            if seq.finish_reason is not None:
                sched.remove(seq)
        return events

    def _expired(self, seq: Sequence) -> UpstreamTimeout:
        late_ms = (time.monotonic() - (seq.deadline or 0.0)) * 1000.0
        return UpstreamTimeout(
            f"the request's deadline passed {late_ms:.0f} ms ago while it waited for model "
            f"'{self.name}': dropped before its prefill"
        )

    def _advance(self, seq: Sequence, token: int) -> TokenEvent:
        seq.tokens.append(token)
        if token in self._eos and not seq.params.ignore_eos:
            seq.finish_reason = "stop"
            return seq.event(token, seq.text.flush(seq.output[:-1]))
        delta, stopped = seq.text.update(seq.output)
        if stopped:
            seq.finish_reason = "stop"
        elif len(seq.tokens) >= seq.max_len:
            seq.finish_reason = "length"
            delta += seq.text.flush(seq.output)
        return seq.event(token, delta)
