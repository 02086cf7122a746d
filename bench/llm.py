"""Generative serving: continuous batching vs static batching vs one request at a time.

``python -m bench.llm [--quick]``. One small GPT-2 (``ensure_tiny_lm``), one process,
the same engine and forward code under three schedules, so the comparison isolates
scheduling: (a) continuous batching, (b) static batching (collect a batch, run it to
completion, then the next), (c) one request at a time (``max_num_seqs=1``, the naive
server). Prompt and output lengths come from the Azure LLM conversation trace, scaled
to the model's context; arrivals are Poisson at rates set from the naive server's
measured capacity. A second part replays conversations of the Mooncake trace with
prefix caching on and off and counts the prefill tokens computed. On CUDA the same
runs again there, with served tokens/s against the raw forward-pass ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench._llm_load import RunFigures, Served, Slo, figures, run_load, run_serial
from bench._llm_workload import (
    Request,
    azure_requests,
    mooncake_requests,
    poisson_offsets,
    text_corpus,
    trace_path,
)
from bench.report import record, table
from worker.generation.types import GenerationEngine

MAX_PROMPT = 200
MAX_OUTPUT = 64
MAX_SEQS = 32
# Tokens per Mooncake hash id (512 in the trace): 32x smaller.
PREFIX_BLOCK = 16
# Targets: a request meets its objective when TTFT and TPOT are within these
# multiples of the naive server's unloaded medians.
SLO_TTFT_X = 10.0
SLO_TPOT_X = 3.0


@dataclass(frozen=True, slots=True)
class Schedule:
    label: str
    policy: str
    max_num_seqs: int


SCHEDULES = (
    Schedule("continuous", "continuous", MAX_SEQS),
    Schedule("static", "static", MAX_SEQS),
    Schedule("one at a time", "continuous", 1),
)
CONT, STATIC, NAIVE = SCHEDULES

# Opens (not starts) an engine for a schedule, with or without prefix caching.
Opener = Callable[[Schedule, bool], GenerationEngine | Awaitable[GenerationEngine]]


@dataclass(frozen=True, slots=True)
class Plan:
    requests: int
    rate_multiples: tuple[float, ...]
    calibration: int
    prefix_requests: int


@dataclass
class DeviceResult:
    device: str
    naive_capacity: float
    slo: Slo
    unloaded: RunFigures
    runs: dict[tuple[str, float], RunFigures] = field(default_factory=dict)
    rates: tuple[float, ...] = ()
    prefix: dict[bool, tuple[int, float, RunFigures]] = field(default_factory=dict)
    ideal_reuse: float = 0.0
    conversations: int = 0
    prefix_request_count: int = 0
    ceiling: tuple[int, float] | None = None

    @property
    def top(self) -> float:
        return self.rates[-1]


async def _open(opener: Opener, schedule: Schedule, prefix: bool) -> GenerationEngine:
    made = opener(schedule, prefix)
    engine = await made if inspect.isawaitable(made) else made
    await engine.start()
    return engine


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


async def bench_device(
    opener: Opener, device: str, plan: Plan, log: Callable[[str], None]
) -> DeviceResult:
    naive = await _open(opener, NAIVE, False)
    try:
        corpus = text_corpus(naive.encode)
        max_prompt = min(MAX_PROMPT, naive.max_model_len - MAX_OUTPUT)
        requests = azure_requests(
            trace_path("azure"), corpus, plan.requests, max_prompt=max_prompt, max_output=MAX_OUTPUT
        )
        await run_serial(naive, requests[:2])  # warm-up
        calib = await run_serial(naive, requests[: plan.calibration])
        service = statistics.fmean(s.finish - s.arrival for s in calib)
        slo = Slo(
            SLO_TTFT_X * _median([s.ttft for s in calib]),
            SLO_TPOT_X * _median([t for s in calib if (t := s.tpot) is not None]),
        )
        result = DeviceResult(device, 1.0 / service, slo, figures(calib, slo))
        result.rates = tuple(m / service for m in plan.rate_multiples)
        log(
            f"[{device}] naive capacity {1 / service:.2f} req/s; "
            f"SLO TTFT {slo.ttft_s * 1e3:.0f} ms, TPOT {slo.tpot_s * 1e3:.1f} ms"
        )
        await _sweep(naive, NAIVE, requests, result, log)
    finally:
        await naive.stop()
    for schedule in (CONT, STATIC):
        engine = await _open(opener, schedule, False)
        try:
            await run_serial(engine, requests[:2])
            await _sweep(engine, schedule, requests, result, log)
        finally:
            await engine.stop()
    await _prefix(opener, corpus, requests[:2], plan, result, log)
    return result


async def _sweep(
    engine: GenerationEngine,
    schedule: Schedule,
    requests: Sequence[Request],
    result: DeviceResult,
    log: Callable[[str], None],
) -> None:
    for rate in result.rates:
        served = await run_load(engine, requests, poisson_offsets(len(requests), rate))
        f = figures(served, result.slo)
        result.runs[schedule.label, rate] = f
        log(
            f"[{result.device}] {schedule.label} @ {rate:.2f} req/s: {f.tokens_per_s:.0f} tok/s, "
            f"TTFT p99 {f.ttft_p99 * 1e3:.0f} ms, TPOT p99 {f.tpot_p99 * 1e3:.1f} ms "
            f"({f.elapsed_s:.1f} s)"
        )


async def _prefix(
    opener: Opener,
    corpus: Sequence[int],
    warm: Sequence[Request],
    plan: Plan,
    result: DeviceResult,
    log: Callable[[str], None],
) -> None:
    work = None
    for caching in (True, False):
        engine = await _open(opener, CONT, caching)
        try:
            if work is None:
                max_prompt = engine.max_model_len - MAX_OUTPUT
                work = mooncake_requests(
                    trace_path("mooncake"),
                    corpus,
                    plan.prefix_requests,
                    block_tokens=PREFIX_BLOCK,
                    max_prompt=max_prompt,
                    max_output=MAX_OUTPUT,
                )
            await run_serial(engine, warm)
            before = engine.stats()
            # The same arrival rate as the sweep's middle, in the trace's order.
            rate = result.rates[len(result.rates) // 2]
            offsets = poisson_offsets(len(work.requests), rate, seed=2)
            served: list[Served] = await run_load(engine, work.requests, offsets, "prefix")
            after = engine.stats()
        finally:
            await engine.stop()
        prefill = after.prefill_tokens - before.prefill_tokens
        queries = after.prefix_queries - before.prefix_queries
        hits = (after.prefix_hits - before.prefix_hits) / queries if queries else 0.0
        result.prefix[caching] = (prefill, hits, figures(served, result.slo))
        state = "on" if caching else "off"
        log(f"[{result.device}] prefix caching {state}: {prefill} prefill tokens")
    assert work is not None
    result.ideal_reuse = work.ideal_reuse
    result.conversations = work.conversations
    result.prefix_request_count = len(work.requests)


def _ms(v: float) -> float:
    return v * 1e3


def device_rows(r: DeviceResult) -> list[list[object]]:
    rows: list[list[object]] = []
    for rate in r.rates:
        for s in SCHEDULES:
            f = r.runs[s.label, rate]
            rows.append(
                [
                    r.device,
                    s.label,
                    f"{rate:.2f} ({rate / r.naive_capacity:.1f}x)",
                    f.tokens_per_s,
                    _ms(f.ttft_p50),
                    _ms(f.ttft_p99),
                    _ms(f.tpot_p50),
                    _ms(f.tpot_p99),
                    f.goodput,
                    f.mean_batch,
                ]
            )
    return rows


def prefix_rows(r: DeviceResult) -> list[list[object]]:
    rows: list[list[object]] = []
    for caching in (True, False):
        prefill, hit, f = r.prefix[caching]
        rows.append(
            [
                r.device,
                "on" if caching else "off",
                prefill,
                f"{hit:.2f}" if caching else "-",
                _ms(f.ttft_p50),
                _ms(f.ttft_p99),
                f.tokens_per_s,
            ]
        )
    return rows


def device_figures(r: DeviceResult, prefix: str) -> dict[str, float | int | str]:
    top = r.top
    c, s, n = (r.runs[x.label, top] for x in (CONT, STATIC, NAIVE))
    on, off = r.prefix[True][0], r.prefix[False][0]
    out: dict[str, float | int | str] = {
        f"{prefix}_naive_capacity_req_per_s": round(r.naive_capacity, 2),
        f"{prefix}_slo_ttft_ms": round(_ms(r.slo.ttft_s), 1),
        f"{prefix}_slo_tpot_ms": round(_ms(r.slo.tpot_s), 2),
        f"{prefix}_top_rate_req_per_s": round(top, 2),
        f"{prefix}_cont_tokens_per_s": round(c.tokens_per_s, 1),
        f"{prefix}_static_tokens_per_s": round(s.tokens_per_s, 1),
        f"{prefix}_naive_tokens_per_s": round(n.tokens_per_s, 1),
        f"{prefix}_cont_vs_naive_tokens_ratio": round(c.tokens_per_s / n.tokens_per_s, 2),
        f"{prefix}_cont_vs_static_tokens_ratio": round(c.tokens_per_s / s.tokens_per_s, 2),
        f"{prefix}_ttft_p99_cont_vs_static": round(c.ttft_p99 / s.ttft_p99, 3),
        f"{prefix}_tpot_p99_cont_vs_naive": round(c.tpot_p99 / n.tpot_p99, 3),
        f"{prefix}_cont_goodput_req_per_s": round(c.goodput, 2),
        f"{prefix}_static_goodput_req_per_s": round(s.goodput, 2),
        f"{prefix}_naive_goodput_req_per_s": round(n.goodput, 2),
        f"{prefix}_prefix_prefill_tokens_on": on,
        f"{prefix}_prefix_prefill_tokens_off": off,
        f"{prefix}_prefix_prefill_reduction": round(1 - on / off, 3) if off else 0.0,
        f"{prefix}_prefix_hit_rate": round(r.prefix[True][1], 3),
        f"{prefix}_prefix_ideal_reuse": round(r.ideal_reuse, 3),
    }
    if r.ceiling is not None:
        batch, ceiling = r.ceiling
        out[f"{prefix}_raw_ceiling_tokens_per_s_batch{batch}"] = round(ceiling, 1)
        out[f"{prefix}_cont_vs_raw_ceiling"] = round(c.tokens_per_s / ceiling, 3)
    return out


def verdicts(r: DeviceResult) -> str:
    top = r.top
    c, s, n = (r.runs[x.label, top] for x in (CONT, STATIC, NAIVE))
    on, off = r.prefix[True][0], r.prefix[False][0]
    checks = [
        ("continuous/naive output tokens/s >= 4", c.tokens_per_s / n.tokens_per_s >= 4),
        ("continuous TPOT p99 < naive's", c.tpot_p99 < n.tpot_p99),
        ("continuous TTFT p99 <= 0.5x static's", c.ttft_p99 <= 0.5 * s.ttft_p99),
        ("prefill tokens cut by prefix caching >= 50%", off > 0 and 1 - on / off >= 0.5),
    ]
    return "; ".join(f"{name}: {'met' if ok else 'missed'}" for name, ok in checks)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="short run, finishes within a minute")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument(
        "--dry",
        action="store_true",
        help="check the harness on a stand-in engine that sleeps instead of computing "
        "(its figures mean nothing and are not written)",
    )
    return p.parse_args(argv)


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(requests=40, rate_multiples=(1.0, 8.0), calibration=6, prefix_requests=40)
    return Plan(
        requests=160, rate_multiples=(0.5, 1.0, 2.0, 4.0, 8.0), calibration=16, prefix_requests=120
    )


def standin_opener(schedule: Schedule, prefix: bool) -> GenerationEngine:
    from bench._llm_standin import StandInEngine

    return StandInEngine(
        policy=schedule.policy,
        max_num_seqs=schedule.max_num_seqs,
        max_batched_tokens=1024,
        block_size=16,
        prefix_caching=prefix,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    plan = plan_for(args.quick)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s {msg}", flush=True)

    results: list[DeviceResult] = []
    notes: list[str] = []
    if args.dry:
        results.append(asyncio.run(bench_device(standin_opener, "stand-in", plan, log)))
    else:
        raise SystemExit("the generation engine is not there yet; use --dry")

    headers = [
        "device",
        "schedule",
        "rate req/s (x naive cap.)",
        "output tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "TPOT p50 ms",
        "TPOT p99 ms",
        "goodput req/s",
        "mean batch",
    ]
    rows = [row for r in results for row in device_rows(r)]
    prefix_headers = [
        "device",
        "prefix caching",
        "prefill tokens",
        "hit rate",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "output tok/s",
    ]
    body_parts = [
        table(headers, rows),
        "",
        table(prefix_headers, [row for r in results for row in prefix_rows(r)]),
        "",
    ]
    figs: dict[str, float | int | str] = {}
    for r in results:
        key = "llm" if r.device in ("cpu", "stand-in") else f"llm_{r.device}"
        figs.update(device_figures(r, key))
        body_parts.append(f"Targets on {r.device} at {r.top:.2f} req/s: {verdicts(r)}.")
    body_parts += notes
    body_parts.append(f"Load average (1 min) at the end: {os.getloadavg()[0]:.1f}.")
    record(
        "llm",
        "Generative serving: continuous vs static batching vs one at a time",
        "\n".join(body_parts),
        figs,
        quick=args.quick,
        write=not (args.no_write or args.dry),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
