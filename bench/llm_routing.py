"""KV-cache-aware routing of generative requests against least-loaded, round-robin and
an oracle, on real worker processes.

Four ``meridian worker`` processes on loopback serve the same tiny GPT-2 (built once
into ``var/bench/llm-routing``), each standing for a region at a different emulated
RTT from the client (the client waits the RTT before it sends, as the router's
``--emulate-wan`` does). Prompts come from the Mooncake conversation trace: each
request's ``hash_ids`` are its shared prefix blocks, and each id maps to a fixed text
block, so requests that share ids share a text prefix (the KV-aware router keys
prompts by chained hashes of blocks of exactly that many characters).

Each policy replays the same requests (same arrival times, same max_tokens) with its
own text salt, so no policy profits from another's cached blocks. Requests stream
over HTTP (``/v1/completions``); the client measures TTFT (emulated RTT included) and
reads the prompt's cached tokens from the final usage chunk.

- ``kv-aware``: :class:`router.policies.KvAwarePolicy`, affinity learned from where
  it sent each prefix, costs calibrated from one measured uncached prefill;
- ``oracle``: the same pricing with the cached blocks of each worker read from an
  exact mirror of every worker's KV cache (token block hashes, LRU, its capacity);
- ``least-loaded``: fewest outstanding sequences; ``round-robin``.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np
import orjson

from bench.report import parse_args, record, table
from meridian.net import free_port
from meridian.waiting import wait_until
from router.policies import (
    GenerativeCosts,
    GenerativeRequest,
    KvAwarePolicy,
    LeastLoadedGenerative,
    PrefixAffinity,
    RoundRobinGenerative,
    WorkerCandidate,
    prefix_key,
)

ROOT = Path(__file__).resolve().parent.parent
WORKDIR = ROOT / "var" / "bench" / "llm-routing"
TRACE = Path("/work/shared/data/traces/kvcache-ai_Mooncake/conversation_trace.jsonl")
SHIPPED = ROOT / "simulator" / "defaults" / "mooncake-conversation.jsonl.gz"

BLOCK_CHARS = 256  # characters per trace block: also the router's prefix block size
MAX_BLOCKS = 8  # leading trace blocks used per prompt (the tiny model's context is short)
RTT_MS = (10.0, 20.0, 30.0, 45.0)  # client to each worker's region
MAX_SEQS = 8
KV_TOKENS = 8192  # per worker: room for about 16 prompts, so placement matters
MODEL = "tiny"
HEADERS = ("policy", "prefix hit rate", "TTFT p50 ms", "TTFT p99 ms", "output tok/s", "placed")
WORDS = (
    "cache block prefix token region worker queue route model prompt answer stream "
    "latency batch decode prefill memory page hash chain load spill affinity cost "
    "north south east west river stone cloud light paper glass metal water field tree"
).split()


# --- the model ------------------------------------------------------------------------------


def build_model(out: Path) -> Path:
    """A randomly initialised GPT-2 big enough that prefill dominates TTFT, with a BPE
    tokenizer that reads the bench's words as single tokens."""
    if (out / "config.json").exists():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(0)
    corpus = [" ".join(rng.choices(WORDS, k=40)) for _ in range(200)]
    tok.train_from_iterator(corpus, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    ).save_pretrained(str(out))
    config = GPT2Config(
        vocab_size=tok.get_vocab_size(),
        n_positions=1024,
        n_embd=256,
        n_layer=4,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(str(out))
    return out


# --- the workload ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TraceRequest:
    at: float  # seconds from the start of the run
    blocks: tuple[int, ...]
    max_tokens: int


def load_trace(n: int, rate: float, seed: int = 1, span: int = 1000) -> list[TraceRequest]:
    """``n`` requests of multi-turn conversations (a second block shared with another
    request) among the trace's first ``span``, in trace order, Poisson arrivals at
    ``rate`` per second. Single-turn requests are left out: replayed at this rate they
    would share only the first block, and the run would measure little about caching."""
    opener = TRACE.open("rb") if TRACE.exists() else gzip.open(SHIPPED, "rb")
    with opener as f:
        rows = [orjson.loads(line) for _, line in zip(range(span), f, strict=False)]
    turns = Counter(r["hash_ids"][1] for r in rows if len(r["hash_ids"]) > 1)
    rng = random.Random(seed)
    out: list[TraceRequest] = []
    t = 0.0
    for row in rows:
        ids = tuple(int(i) for i in row["hash_ids"][:MAX_BLOCKS])
        if len(ids) < 2 or turns[ids[1]] < 2:
            continue
        out.append(TraceRequest(t, ids, max(4, min(16, int(row["output_length"]) // 32))))
        t += rng.expovariate(rate)
        if len(out) == n:
            break
    return out


def block_text(block_id: int, salt: int) -> str:
    rng = random.Random(block_id * 7919 + salt * 1_000_003)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < BLOCK_CHARS:
        words.append(rng.choice(WORDS))
    return (" " + " ".join(words))[:BLOCK_CHARS]


def prompt_of(req: TraceRequest, salt: int) -> str:
    return "".join(block_text(b, salt) for b in req.blocks)


# --- workers --------------------------------------------------------------------------------


@dataclass
class Worker:
    worker_id: str
    url: str
    rtt_ms: float
    outstanding: int = 0


@contextmanager
def workers(model_dir: Path, n: int) -> Iterator[list[Worker]]:
    with ExitStack() as stack:
        procs: list[tuple[subprocess.Popen[bytes], str]] = []
        for i in range(n):
            port = free_port()
            log = stack.enter_context((WORKDIR / f"worker{i}.log").open("wb"))
            cmd = [
                sys.executable, "-m", "meridian", "worker", "--http-port", str(port),
                "--grpc-port", "-1", "--engine-threads", "1", "--allow-local-paths",
                "--model", f"{MODEL}:1={model_dir}", "--kv-cache-tokens", str(KV_TOKENS),
                "--max-num-seqs", str(MAX_SEQS), "--max-model-len", "1024",
            ]  # fmt: skip
            env = {**os.environ, "MERIDIAN_WORKER_CACHE_DIR": str(WORKDIR / "cache")}
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            stack.callback(_stop, proc)
            procs.append((proc, f"http://127.0.0.1:{port}"))

        def ready() -> bool:
            for proc, url in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited with {proc.returncode}; see {WORKDIR}")
                try:
                    if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code != 200:
                        return False
                except httpx.HTTPError:
                    return False
            return True

        wait_until(ready, timeout=120, interval=0.2, what="workers ready")
        yield [Worker(f"w{i}", url, RTT_MS[i % len(RTT_MS)]) for i, (_, url) in enumerate(procs)]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- one request ----------------------------------------------------------------------------


@dataclass
class Outcome:
    ttft_s: float
    end_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


async def send(client: httpx.AsyncClient, w: Worker, prompt: str, max_tokens: int) -> Outcome:
    start = time.monotonic()
    await asyncio.sleep(w.rtt_ms / 1000)  # the emulated wide-area round trip
    body = {
        "model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True,
    }  # fmt: skip
    ttft = math.nan
    usage: dict[str, object] = {}
    async with client.stream("POST", f"{w.url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{w.url}: {resp.status_code} {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if math.isnan(ttft) and chunk.get("choices"):
                ttft = time.monotonic() - start
            if chunk.get("usage"):
                usage = chunk["usage"]
    details = usage.get("prompt_tokens_details") or {}
    assert isinstance(details, dict)
    return Outcome(
        ttft,
        time.monotonic() - start,
        int(usage.get("prompt_tokens", 0)),  # type: ignore[call-overload]
        int(details.get("cached_tokens", 0)),
        int(usage.get("completion_tokens", 0)),  # type: ignore[call-overload]
    )


# --- policies under test --------------------------------------------------------------------


class Chooser(Protocol):
    name: str

    def pick(self, prompt: str, req: TraceRequest, ws: Sequence[Worker]) -> Worker: ...


def _candidates(ws: Sequence[Worker]) -> list[WorkerCandidate]:
    return [WorkerCandidate(w.worker_id, w.worker_id, w.rtt_ms, running=w.outstanding) for w in ws]


class KvChooser:
    name = "kv-aware"

    def __init__(self, costs: GenerativeCosts) -> None:
        # each worker's KV capacity in router blocks, from its size in tokens
        blocks = int(KV_TOKENS * costs.chars_per_token / BLOCK_CHARS)
        self.policy = KvAwarePolicy(costs, PrefixAffinity(worker_blocks=blocks))

    def pick(self, prompt: str, req: TraceRequest, ws: Sequence[Worker]) -> Worker:
        request = GenerativeRequest(
            MODEL, len(prompt), req.max_tokens, prefix_key(prompt, BLOCK_CHARS)
        )
        choice = self.policy.choose(request, _candidates(ws))
        assert choice is not None
        self.policy.record(request, choice.worker_id)
        return next(w for w in ws if w.worker_id == choice.worker_id)


@dataclass
class CacheMirror:
    """An exact model of one worker's prefix cache: token block hashes, LRU, its size."""

    capacity: int
    blocks: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def matched(self, hashes: Sequence[bytes]) -> int:
        n = 0
        for h in hashes:
            if h not in self.blocks:
                break
            n += 1
        return n

    def add(self, hashes: Sequence[bytes]) -> None:
        for h in hashes:
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


class OracleChooser:
    """Prices like ``kv-aware`` but reads each worker's cache (its exact mirror) instead
    of learning affinity; cached blocks are counted in the router's character blocks."""

    name = "oracle"

    def __init__(self, costs: GenerativeCosts, model_dir: Path, block_size: int) -> None:
        from tokenizers import Tokenizer

        self.policy = KvAwarePolicy(costs)
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.block_size = block_size
        self.mirrors: dict[str, CacheMirror] = {}
        self.costs = costs

    def pick(self, prompt: str, req: TraceRequest, ws: Sequence[Worker]) -> Worker:
        from worker.generation.kv_cache import prefix_block_hashes

        ids = self.tokenizer.encode(prompt).ids
        hashes = prefix_block_hashes(ids, self.block_size)
        cached: dict[str, int] = {}
        chars_per_block = self.block_size * len(prompt) / max(1, len(ids))
        for w in ws:
            mirror = self.mirrors.setdefault(w.worker_id, CacheMirror(KV_TOKENS // self.block_size))
            cached[w.worker_id] = int(mirror.matched(hashes) * chars_per_block // BLOCK_CHARS)
        request = GenerativeRequest(MODEL, len(prompt), req.max_tokens)
        choice = self.policy.choose(request, _candidates(ws), cached)
        assert choice is not None
        self.mirrors[choice.worker_id].add(hashes)
        return next(w for w in ws if w.worker_id == choice.worker_id)


class BaselineChooser:
    def __init__(self, inner: LeastLoadedGenerative | RoundRobinGenerative) -> None:
        self.inner = inner
        self.name = inner.name

    def pick(self, prompt: str, req: TraceRequest, ws: Sequence[Worker]) -> Worker:
        request = GenerativeRequest(MODEL, len(prompt), req.max_tokens)
        choice = self.inner.choose(request, _candidates(ws))
        assert choice is not None
        return next(w for w in ws if w.worker_id == choice.worker_id)


# --- a run ----------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    outcomes: list[Outcome]
    wall_s: float
    placed: dict[str, int]

    @property
    def hit_rate(self) -> float:
        prompt = sum(o.prompt_tokens for o in self.outcomes)
        return sum(o.cached_tokens for o in self.outcomes) / prompt if prompt else 0.0

    def ttft_ms(self, q: float) -> float:
        return float(np.percentile([o.ttft_s for o in self.outcomes], q) * 1000)

    @property
    def output_tps(self) -> float:
        return sum(o.output_tokens for o in self.outcomes) / self.wall_s


async def run_phase(
    chooser: Chooser, trace: Sequence[TraceRequest], ws: Sequence[Worker], salt: int
) -> PhaseResult:
    placed = dict.fromkeys((w.worker_id for w in ws), 0)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.monotonic()

        async def one(req: TraceRequest) -> Outcome:
            delay = start + req.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            prompt = prompt_of(req, salt)
            w = chooser.pick(prompt, req, ws)
            placed[w.worker_id] += 1
            w.outstanding += 1
            try:
                return await send(client, w, prompt, req.max_tokens)
            finally:
                w.outstanding -= 1

        outcomes = await asyncio.gather(*(one(r) for r in trace))
        wall = time.monotonic() - start
    return PhaseResult(chooser.name, list(outcomes), wall, placed)


async def calibrate(ws: Sequence[Worker], tokenizer_dir: Path) -> GenerativeCosts:
    """Prefill speed and time per output token, measured on one idle worker."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    w = ws[0]
    saved, w.rtt_ms = w.rtt_ms, 0.0
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(2):  # the first warms the engine up
            prompt = prompt_of(TraceRequest(0, tuple(range(90_000, 90_000 + MAX_BLOCKS)), 1), i)
            long = await send(client, w, prompt, 1)
        decode = await send(client, w, block_text(1, 99), 33)
        for other in ws[1:]:  # warm the others up too
            await send(client, other, block_text(2, 99), 2)
    w.rtt_ms = saved
    tokens = len(tok.encode(prompt).ids)
    prefill_tps = tokens / max(long.ttft_s, 1e-3)
    tpot_ms = 1000 * (decode.end_s - decode.ttft_s) / 32
    return GenerativeCosts(
        block_chars=BLOCK_CHARS,
        chars_per_token=len(prompt) / tokens,
        max_seqs=MAX_SEQS,
        prefill_tokens_per_s=prefill_tps,
        tpot_ms=tpot_ms,
        mean_output_tokens=10,
        mean_prompt_tokens=tokens * 0.75,
        load_slack=1.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__ or "", argv)
    n, rate = (40, 5.0) if args.quick else (240, 5.0)
    WORKDIR.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(WORKDIR / "tiny-gpt2")
    trace = load_trace(n, rate)
    with workers(model_dir, 4) as ws:
        costs = asyncio.run(calibrate(ws, model_dir))
        choosers: list[Chooser] = [
            KvChooser(costs),
            BaselineChooser(LeastLoadedGenerative()),
            BaselineChooser(RoundRobinGenerative()),
            OracleChooser(costs, model_dir, 16),
        ]
        results = [asyncio.run(run_phase(c, trace, ws, salt)) for salt, c in enumerate(choosers)]
    by = {r.name: r for r in results}
    rows = [
        (
            r.name, round(r.hit_rate, 3), r.ttft_ms(50), r.ttft_ms(99), r.output_tps,
            " ".join(f"{k}:{v}" for k, v in r.placed.items()),
        )
        for r in results
    ]  # fmt: skip
    kv, ll, oracle = by["kv-aware"], by["least-loaded"], by["oracle"]
    figures: dict[str, float | int | str] = {
        "kv_hit_rate": round(kv.hit_rate, 3),
        "oracle_hit_rate": round(oracle.hit_rate, 3),
        "least_loaded_hit_rate": round(ll.hit_rate, 3),
        "kv_ttft_p99_ms": round(kv.ttft_ms(99), 1),
        "least_loaded_ttft_p99_ms": round(ll.ttft_ms(99), 1),
        "ttft_p99_ratio_kv_vs_least_loaded": round(kv.ttft_ms(99) / ll.ttft_ms(99), 3),
        "hit_rate_ratio_kv_vs_oracle": round(kv.hit_rate / max(oracle.hit_rate, 1e-9), 3),
    }
    body = "\n".join(
        [
            f"{n} Mooncake multi-turn conversation turns (first {MAX_BLOCKS} blocks each, "
            f"{BLOCK_CHARS} characters a block), Poisson arrivals at {rate:g}/s, replayed "
            f"per policy against 4 `meridian worker` processes (tiny GPT-2, KV cache "
            f"{KV_TOKENS} tokens, {MAX_SEQS} sequences each) at emulated RTTs "
            f"{', '.join(f'{r:g}' for r in RTT_MS)} ms. Calibrated: prefill "
            f"{costs.prefill_tokens_per_s:.0f} tokens/s, TPOT {costs.tpot_ms:.1f} ms.",
            "",
            table(HEADERS, rows),
            "",
            "Phases run one after another. On a host with fewer cores than workers (the four"
            " workers and the client share them), TTFT p99 is the tail of CPU contention and"
            " moves from run to run by several times; the hit rates are stable.",
        ]
    )
    record(
        "llm_routing",
        "KV-cache-aware routing of generative requests (bench.llm_routing)",
        body,
        figures,
        quick=args.quick,
        write=not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
