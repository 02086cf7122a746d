"""Open-loop load on a generation engine in this process, and the figures of one run.

Each request is a task that waits for its arrival time, calls
:meth:`GenerationEngine.generate` and notes when every token event comes back. The
clock for a request starts at its scheduled arrival, not when its task woke, so a
busy event loop counts against the server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench._llm_workload import Request
from worker.generation.types import GenerationEngine, SamplingParams


@dataclass(frozen=True, slots=True)
class Served:
    """What one request saw; times in seconds from the start of the run, counted
    from when it was sent (its arrival)."""

    arrival: float
    first_token: float
    finish: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """Mean time between output tokens after the first; None for one-token answers."""
        if self.output_tokens < 2:
            return None
        return (self.finish - self.first_token) / (self.output_tokens - 1)


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_s: float
    tpot_s: float

    def met(self, s: Served) -> bool:
        tpot = s.tpot
        return s.ttft <= self.ttft_s and (tpot is None or tpot <= self.tpot_s)


@dataclass(frozen=True, slots=True)
class RunFigures:
    requests: int
    elapsed_s: float
    tokens_per_s: float
    requests_per_s: float
    ttft_p50: float
    ttft_p99: float
    tpot_p50: float
    tpot_p99: float
    goodput: float
    # Mean sequences decoding at once (Little's law over the decode phases).
    mean_batch: float


async def _one(
    engine: GenerationEngine,
    req: Request,
    offset: float,
    t0: float,
    rid: str,
    previous: asyncio.Task[Served] | None,
) -> Served:
    arrival = offset
    if previous is not None:
        arrival = max(arrival, (await previous).finish)
    delay = t0 + arrival - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    params = SamplingParams(max_tokens=req.max_tokens, temperature=0.0, ignore_eos=True)
    first: float | None = None
    completion = cached = prompt = 0
    finished = False
    async for ev in engine.generate(req.prompt, params, rid):
        now = time.perf_counter() - t0
        if first is None and ev.completion_tokens > 0:
            first = now
        completion, cached, prompt = ev.completion_tokens, ev.cached_tokens, ev.prompt_tokens
        if ev.finish_reason is not None:
            if ev.finish_reason != "length":
                raise RuntimeError(f"request {rid} ended with {ev.finish_reason!r}")
            finished = True
            break
    if not finished or first is None:
        raise RuntimeError(f"request {rid}: the stream ended without a finish reason")
    return Served(arrival, first, time.perf_counter() - t0, prompt, completion, cached)


async def run_load(
    engine: GenerationEngine,
    requests: Sequence[Request],
    offsets: Sequence[float],
    tag: str = "r",
) -> list[Served]:
    """Send ``requests[i]`` at ``offsets[i]`` seconds, but not before the request
    ``requests[i].after`` names has finished; return what each saw, in order."""
    t0 = time.perf_counter()
    tasks: list[asyncio.Task[Served]] = []
    for i, (r, at) in enumerate(zip(requests, offsets, strict=True)):
        previous = tasks[r.after] if r.after is not None else None
        tasks.append(asyncio.create_task(_one(engine, r, at, t0, f"{tag}-{i}", previous)))
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_serial(engine: GenerationEngine, requests: Sequence[Request]) -> list[Served]:
    """One request at a time, each sent when the last one finished: the unloaded figures."""
    out = []
    for i, r in enumerate(requests):
        out += await run_load(engine, [r], [0.0], f"serial-{i}")
    return out


def figures(served: Sequence[Served], slo: Slo) -> RunFigures:
    start = min(s.arrival for s in served)
    elapsed = max(s.finish for s in served) - start
    ttft = np.array([s.ttft for s in served])
    tpots = [t for s in served if (t := s.tpot) is not None]
    tpot = np.array(tpots or [0.0])
    decoding = sum(s.finish - s.first_token for s in served)
    return RunFigures(
        requests=len(served),
        elapsed_s=elapsed,
        tokens_per_s=sum(s.output_tokens for s in served) / elapsed,
        requests_per_s=len(served) / elapsed,
        ttft_p50=float(np.percentile(ttft, 50)),
        ttft_p99=float(np.percentile(ttft, 99)),
        tpot_p50=float(np.percentile(tpot, 50)),
        tpot_p99=float(np.percentile(tpot, 99)),
        goodput=sum(slo.met(s) for s in served) / elapsed,
        mean_batch=decoding / elapsed,
    )
