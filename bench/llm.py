"""Generative serving: continuous batching vs static batching vs one request at a time.

``python -m bench.llm [--quick]``. One small GPT-2 (``ensure_tiny_lm``), one process,
the worker's generation engine and forward code under three schedules, so the
comparison isolates scheduling: (a) continuous batching, (b) static batching (collect
a batch, run it to completion, then the next), (c) one request at a time
(``max_num_seqs=1``, the naive server). Prompt and output lengths come from the Azure
LLM conversation trace, scaled to the model's context; arrivals are Poisson at rates
set from the naive server's measured capacity. A second part replays conversations of
the Mooncake trace with prefix caching on and off and counts the prefill tokens
computed. Where CUDA is available everything runs again there. Served tokens/s are
also set against the bare forward pass at the same batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._llm_forward import raw_ceiling, step_costs
from bench._llm_load import Served, Slo, figures, run_load, run_serial
from bench._llm_report import (
    DeviceResult,
    PrefixRun,
    Schedule,
    findings,
    headline,
    prefix_table,
    sweep_table,
)
from bench._llm_workload import (
    Request,
    azure_requests,
    mooncake_requests,
    poisson_offsets,
    text_corpus,
    trace_path,
)
from bench.report import parse_args, record
from worker.generation.types import GenerationEngine

MAX_PROMPT = 200
MAX_OUTPUT = 64
MAX_SEQS = 32
# The KV budget of every engine: room for MAX_SEQS full contexts and a prefix cache.
KV_CACHE_TOKENS = 32768
# Tokens per Mooncake hash id (512 in the trace): 32x fewer.
PREFIX_BLOCK = 16
# Arrival rate of the prefix runs, as a multiple of the naive server's capacity.
PREFIX_RATE_X = 2.0
# Intra-op threads of the model on CPU: one core is left to the event loop (the load
# generator, streaming and detokenization), so the two do not fight over cores.
CPU_THREADS = max(1, (os.cpu_count() or 2) - 1)
# A request meets its objective when its TTFT and TPOT are within these multiples of
# the naive server's unloaded medians.
SLO_TTFT_X = 10.0
SLO_TPOT_X = 5.0

SCHEDULES = (
    Schedule("continuous", "continuous", MAX_SEQS),
    Schedule("static", "static", MAX_SEQS),
    Schedule("one at a time", "continuous", 1),
)
CONT, STATIC, NAIVE = SCHEDULES

# Opens (not starts) an engine for a schedule, with or without prefix caching.
Opener = Callable[[Schedule, bool], GenerationEngine]
Log = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Plan:
    requests: int
    rate_multiples: tuple[float, ...]
    calibration: int
    prefix_requests: int
    ceiling_s: float


def plan_for(quick: bool) -> Plan:
    if quick:
        return Plan(
            requests=32, rate_multiples=(2.0, 8.0), calibration=12, prefix_requests=32, ceiling_s=1
        )
    return Plan(
        requests=240,
        rate_multiples=(0.5, 1.0, 2.0, 4.0, 8.0),
        calibration=48,
        prefix_requests=160,
        ceiling_s=3,
    )


def engine_opener(model_dir: Path, device: str) -> Opener:
    """Opens the worker's generation engine on ``model_dir`` for each schedule."""
    from worker.generation.factory import open_generation_engine
    from worker.generation.settings import GenerationSettings

    def open_(schedule: Schedule, prefix: bool) -> GenerationEngine:
        settings = GenerationSettings(
            policy="static" if schedule.policy == "static" else "continuous",
            max_num_seqs=schedule.max_num_seqs,
            prefix_caching=prefix,
            kv_cache_tokens=KV_CACHE_TOKENS,
            threads=CPU_THREADS if device == "cpu" else None,
        )
        name = f"bench-{schedule.label.replace(' ', '-')}"
        return open_generation_engine(model_dir, settings, name=name, device=device)

    return open_


async def _started(opener: Opener, schedule: Schedule, prefix: bool) -> GenerationEngine:
    engine = opener(schedule, prefix)
    await engine.start()
    return engine


def _steps(engine: GenerationEngine) -> tuple[int, int] | None:
    """Forward steps so far and how many mixed decodes with prefill chunks, where the
    engine counts them (``counters()`` is not part of the contract)."""
    counters = getattr(engine, "counters", None)
    if counters is None:
        return None
    c = counters()
    return int(c.steps), int(c.mixed_steps)


async def bench_device(opener: Opener, device: str, plan: Plan, log: Log) -> DeviceResult:
    async with contextlib.AsyncExitStack() as stack:
        engines: dict[str, GenerationEngine] = {}
        for schedule in SCHEDULES:
            engine = await _started(opener, schedule, False)
            stack.push_async_callback(engine.stop)
            engines[schedule.label] = engine
        naive = engines[NAIVE.label]
        corpus = text_corpus(naive.encode)
        max_prompt = min(MAX_PROMPT, naive.max_model_len - MAX_OUTPUT)
        requests = azure_requests(
            trace_path("azure"), corpus, plan.requests, max_prompt=max_prompt, max_output=MAX_OUTPUT
        )
        for engine in engines.values():
            await run_serial(engine, requests[:2])  # warm-up
        calib = await run_serial(naive, requests[: plan.calibration])
        # Seconds per output token served alone (prefill included), times the mean
        # output of the whole workload: the naive server's mean service time.
        per_token = sum(s.finish - s.arrival for s in calib) / sum(s.output_tokens for s in calib)
        mean_output = statistics.fmean(r.max_tokens for r in requests)
        mean_prompt = statistics.fmean(len(r.prompt) for r in requests)
        service = per_token * mean_output
        slo = Slo(
            SLO_TTFT_X * statistics.median(s.ttft for s in calib),
            SLO_TPOT_X * statistics.median(t for s in calib if (t := s.tpot) is not None),
        )
        result = DeviceResult(
            device=device,
            naive_capacity=1.0 / service,
            slo=slo,
            unloaded=figures(calib, slo),
            rates=tuple(m / service for m in plan.rate_multiples),
            mean_prompt=mean_prompt,
            mean_output=mean_output,
            context=round(mean_prompt + mean_output / 2),
        )
        log(
            f"[{device}] naive capacity {1 / service:.2f} req/s; "
            f"SLO TTFT {slo.ttft_s * 1e3:.0f} ms, TPOT {slo.tpot_s * 1e3:.1f} ms"
        )
        # The three schedules one after another at each rate, so that what else runs
        # on a shared machine weighs on them alike.
        for rate in result.rates:
            offsets = poisson_offsets(len(requests), rate)
            for schedule in (NAIVE, CONT, STATIC):
                engine = engines[schedule.label]
                before = _steps(engine)
                served = await run_load(engine, requests, offsets)
                after = _steps(engine)
                f = figures(served, slo)
                result.runs[schedule.label, rate] = f
                if before is not None and after is not None and after[0] > before[0]:
                    share = (after[1] - before[1]) / (after[0] - before[0])
                    result.mixed_share[schedule.label, rate] = share
                log(
                    f"[{device}] {schedule.label} @ {rate:.2f} req/s: {f.tokens_per_s:.0f} "
                    f"tok/s, TTFT p99 {f.ttft_p99 * 1e3:.0f} ms, TPOT p99 "
                    f"{f.tpot_p99 * 1e3:.1f} ms ({f.elapsed_s:.1f} s)"
                )
    await _prefix(opener, corpus, requests[:2], plan, result, log)
    return result


async def _prefix(
    opener: Opener,
    corpus: Sequence[int],
    warm: Sequence[Request],
    plan: Plan,
    result: DeviceResult,
    log: Log,
) -> None:
    """The Mooncake conversations on continuous batching, prefix caching on, then off."""
    result.prefix_rate = PREFIX_RATE_X * result.naive_capacity
    work = None
    for caching in (True, False):
        engine = await _started(opener, CONT, caching)
        try:
            if work is None:
                work = mooncake_requests(
                    trace_path("mooncake"),
                    corpus,
                    plan.prefix_requests,
                    block_tokens=PREFIX_BLOCK,
                    max_prompt=engine.max_model_len - MAX_OUTPUT,
                    max_output=MAX_OUTPUT,
                )
            await run_serial(engine, warm)
            before = engine.stats()
            offsets = poisson_offsets(len(work.requests), result.prefix_rate, seed=2)
            served: list[Served] = await run_load(engine, work.requests, offsets, "prefix")
            after = engine.stats()
        finally:
            await engine.stop()
        prefill = after.prefill_tokens - before.prefill_tokens
        queries = after.prefix_queries - before.prefix_queries
        hits = (after.prefix_hits - before.prefix_hits) / queries if queries else 0.0
        result.prefix[caching] = PrefixRun(prefill, hits, figures(served, result.slo))
        state = "on" if caching else "off"
        log(f"[{result.device}] prefix caching {state}: {prefill} prefill tokens")
    assert work is not None
    result.ideal_reuse = work.ideal_reuse
    result.conversations = work.conversations
    result.prefix_requests = len(work.requests)


def setup_text(model_dir: Path, results: Sequence[DeviceResult], plan: Plan) -> str:
    from worker.generation.settings import GenerationSettings

    defaults = GenerationSettings()
    config = json.loads((model_dir / "config.json").read_text())
    r = results[0]
    threads = ""
    if any(x.device == "cpu" for x in results):
        threads = f"on CPU {CPU_THREADS} intra-op thread(s), the other core left to the loop; "
    multiples = ", ".join(f"{m:g}" for m in plan.rate_multiples)
    return (
        f"Model: GPT-2, {config['n_layer']} layers, width {config['n_embd']}, vocabulary "
        f"{config['vocab_size']}, context {config['n_positions']} (`ensure_tiny_lm`, trained "
        f"on standard-library docstrings). Engine: the worker's generation engine, paged KV "
        f"cache of {KV_CACHE_TOKENS} tokens in blocks of {defaults.block_size}, up to "
        f"{defaults.max_batched_tokens} tokens a step and prefill chunks of up to "
        f"{defaults.prefill_chunk} (its defaults); "
        f"continuous and static batching with up to {MAX_SEQS} sequences, the naive server "
        f"with 1; prefix caching off except in the prefix runs; greedy decoding, EOS "
        f"ignored so every answer is as long as the trace says; {threads}the load "
        "generator and the token streams run on the engine's event loop (all in one "
        "process).\n\n"
        f"Workload: {plan.requests} requests drawn at random from the Azure LLM inference "
        'trace 2023, conversation part (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0), '
        f"lengths scaled so the trace's 99th percentiles land on {MAX_PROMPT} prompt and "
        f"{MAX_OUTPUT} output tokens and clipped there (mean {r.mean_prompt:.0f} and "
        f"{r.mean_output:.0f}); prompts are windows of standard-library docstrings. "
        f"Arrivals are Poisson at {multiples}x the naive server's capacity (1 / its mean "
        "service time, measured alone first). TTFT counts from the arrival, queueing "
        "included; TPOT is the mean gap between a request's later tokens. Goodput counts "
        f"requests meeting TTFT <= {SLO_TTFT_X:g}x and TPOT <= {SLO_TPOT_X:g}x the naive "
        f"server's unloaded medians: on {r.device} TTFT <= {r.slo.ttft_s * 1e3:.0f} ms and "
        f"TPOT <= {r.slo.tpot_s * 1e3:.1f} ms. Prefix runs: whole conversations sampled "
        "from the Mooncake conversation trace (FAST'25), each 512-token hash block mapped "
        f"to a fixed {PREFIX_BLOCK}-token block of text, each later turn sent after the "
        "previous answer."
    )


def main(argv: Sequence[str] | None = None) -> int:
    def devices_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--device", choices=("all", "cpu", "cuda"), default="all",
            help="all: the CPU, then CUDA where there is one (section bench:llm); cuda: "
            "CUDA alone, written to its own section (bench:llm_cuda)",
        )  # fmt: skip

    args = parse_args(__doc__.splitlines()[0], argv, devices_option)
    plan = plan_for(args.quick)
    started = time.monotonic()
    load_before = os.getloadavg()[0]

    def log(msg: str) -> None:
        print(f"{time.monotonic() - started:6.1f}s {msg}", flush=True)

    import torch

    from worker.generation.tiny_lm import ensure_tiny_lm

    model_dir = ensure_tiny_lm()
    log(f"model {model_dir}")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("--device cuda: torch.cuda.is_available() is false on this machine")
        return 2
    devices = {"all": ["cpu"] + (["cuda"] if cuda else []), "cpu": ["cpu"], "cuda": ["cuda"]}[
        args.device
    ]
    results: list[DeviceResult] = []
    for device in devices:
        r = asyncio.run(bench_device(engine_opener(model_dir, device), device, plan, log))
        batch = max(1, round(r.at_top(CONT).mean_batch))
        ceiling = raw_ceiling(model_dir, device, batch, r.context, plan.ceiling_s, CPU_THREADS)
        r.ceiling = (batch, ceiling)
        r.steps = step_costs(model_dir, device, batch, r.context, MAX_PROMPT, CPU_THREADS)
        results.append(r)

    figs: dict[str, float | int | str] = {}
    parts = [setup_text(model_dir, results, plan), "", sweep_table(results, SCHEDULES), ""]
    parts += [prefix_table(results), ""]
    for r in results:
        figs.update(headline(r, CONT, STATIC, NAIVE, "llm" if r.device == "cpu" else "llm_cuda"))
        parts += [findings(r, CONT, STATIC, NAIVE), ""]
    if "cuda" not in devices:
        why = "not asked for" if cuda else "`torch.cuda.is_available()` is false on this machine"
        parts.append(f"CUDA: skipped here, {why}; `--device cuda` writes bench:llm_cuda.")
        figs["llm_cuda"] = "skipped"
    if torch.cuda.is_available() and "cuda" in devices:
        parts.append(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}.")
    parts.append(
        f"The machine is shared: load average (1 min) {load_before:.1f} at the start and "
        f"{os.getloadavg()[0]:.1f} at the end; figures move between runs."
    )
    alone = devices == ["cuda"]
    record(
        "llm_cuda" if alone else "llm",
        "Generative serving: continuous vs static batching vs one at a time"
        + (", on CUDA" if alone else ""),
        "\n".join(parts),
        figs,
        quick=args.quick,
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
