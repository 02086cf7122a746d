"""Greedy output of the batched engine equals per-sequence Hugging Face greedy decoding."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.generation.conftest import EngineFactory
from tests.worker.generation.tiny import build_tiny_llama
from worker.generation.engine import Engine
from worker.generation.factory import open_generation_engine
from worker.generation.model import UnsupportedModel
from worker.generation.settings import GenerationSettings
from worker.generation.types import SamplingParams

TIE = 1e-4


def prompts_sharing_prefixes() -> list[list[int]]:
    """Prompt lengths 3..90 tokens; several share a 40-token prefix, two are identical."""
    g = torch.Generator().manual_seed(7)
    shared = torch.randint(1, 400, (40,), generator=g).tolist()

    def rand(n: int) -> list[int]:
        return list(torch.randint(1, 400, (n,), generator=g).tolist())

    return [
        rand(3),
        shared + rand(5),
        rand(17),
        shared + rand(50),  # chunk-prefilled
        shared + rand(1),
        rand(90),  # chunk-prefilled
        shared + rand(5)[:0] + rand(9),
        rand(1),
        shared[:33],
        shared + rand(2),
    ]


def assert_greedy(model: Any, prompt: list[int], output: list[int], hf_output: list[int]) -> None:
    """Every engine token is HF's best (or within ``TIE`` of it); and the engine's output
    equals ``hf_output`` up to the first near-tie, where they may part."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + output])).logits[0]
    for i, token in enumerate(output):
        row = logits[len(prompt) - 1 + i]
        best = float(row.max())
        assert float(row[token]) >= best - TIE, (
            f"token {i} of a {len(prompt)}-token prompt: engine chose {token} "
            f"({float(row[token]):.5f}), best is {int(row.argmax())} ({best:.5f})"
        )
    for i, (mine, theirs) in enumerate(zip(output, hf_output, strict=True)):
        if mine != theirs:
            row = logits[len(prompt) - 1 + i]
            top2 = row.topk(2).values
            assert float(top2[0] - top2[1]) < TIE, f"differs from generate() at token {i}"
            break


def hf_greedy(model: Any, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
    return list(out[0, len(prompt) :].tolist())


async def collect(
    engine: Engine,
    prompt: list[int],
    params: SamplingParams,
    request_id: str,
    progress: Progress | None = None,
) -> list[int]:
    tokens: list[int] = []
    async for event in engine.generate(prompt, params, request_id):
        if event.token_id is not None:
            tokens.append(event.token_id)
        if progress is not None:
            progress.record(request_id, len(tokens))
    return tokens


class Progress:
    """Tokens received per request, with a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._changed = asyncio.Event()

    def record(self, request_id: str, count: int) -> None:
        self.counts[request_id] = count
        self._changed.set()

    async def wait_all_reach(self, request_ids: list[str], count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not all(self.counts.get(r, 0) >= count for r in request_ids):
                self._changed.clear()
                await self._changed.wait()


async def staggered(engine: Engine, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """Start the prompts in waves: each wave once every earlier one is mid-decode."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    progress = Progress()
    tasks: list[asyncio.Task[list[int]]] = []
    for wave in (prompts[:3], prompts[3:6], prompts[6:]):
        started = [f"r{i}" for i in range(len(tasks))]
        # every earlier request is decoding (or done) when the next wave arrives
        await progress.wait_all_reach(started, 2)
        for prompt in wave:
            rid = f"r{len(tasks)}"
            tasks.append(asyncio.create_task(collect(engine, prompt, params, rid, progress)))
    return list(await asyncio.gather(*tasks))


@pytest.mark.parametrize("prefix_caching", [True, False])
async def test_continuous_batching_matches_hf_greedy(
    engine_factory: EngineFactory, hf_gpt2: Any, prefix_caching: bool
) -> None:
    prompts = prompts_sharing_prefixes()
    async with engine_factory(
        prefix_caching=prefix_caching, prefill_chunk=16, max_batched_tokens=48
    ) as engine:
        outputs = await staggered(engine, prompts, max_tokens=12)
        stats = engine.stats()
        counters = engine.counters()
    # later arrivals were prefilled (in chunks) in the same steps as earlier decodes
    assert counters.mixed_steps > 0
    assert counters.prefill_tokens > 0 and counters.decode_tokens > 0
    for prompt, output in zip(prompts, outputs, strict=True):
        assert len(output) == 12
        assert_greedy(hf_gpt2, prompt, output, hf_greedy(hf_gpt2, prompt, 12))
    if prefix_caching:
        assert stats.prefix_hits > 0
    else:
        assert stats.prefix_hits == 0
    assert stats.kv_blocks_used == 0 or prefix_caching
    assert stats.running == stats.waiting == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"policy": "static", "max_num_seqs": 4},
        {"max_num_seqs": 1},
        # 24 blocks of 4 tokens: far less than the prompts need together
        {"kv_cache_tokens": 96, "prefill_chunk": 16},
    ],
    ids=["static", "one-at-a-time", "preempting"],
)
async def test_other_schedules_give_the_same_greedy_tokens(
    engine_factory: EngineFactory, hf_gpt2: Any, overrides: dict[str, Any]
) -> None:
    prompts = [p[:60] for p in prompts_sharing_prefixes()]
    async with engine_factory(**overrides) as engine:
        outputs = await staggered(engine, prompts, max_tokens=10)
        stats = engine.stats()
    for prompt, output in zip(prompts, outputs, strict=True):
        assert_greedy(hf_gpt2, prompt, output, hf_greedy(hf_gpt2, prompt, len(output)))
        assert len(output) == 10
    if "kv_cache_tokens" in overrides:
        assert stats.preemptions > 0


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
async def test_llama_family_matches_hf_greedy(tmp_path: Path, model_type: str) -> None:
    from transformers import AutoModelForCausalLM

    model_dir = build_tiny_llama(tmp_path / model_type, model_type)
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir), attn_implementation="eager")
    hf.eval()
    settings = GenerationSettings(kv_cache_tokens=2048, block_size=4, prefill_chunk=16)
    engine = open_generation_engine(model_dir, settings, name="llama", device="cpu")
    await engine.start()
    try:
        prompts = [p[:50] for p in prompts_sharing_prefixes()[:6]]
        outputs = await staggered(engine, prompts, max_tokens=8)
    finally:
        await engine.stop()
    for prompt, output in zip(prompts, outputs, strict=True):
        assert_greedy(hf, prompt, output, hf_greedy(hf, prompt, 8))


def test_unsupported_architectures_are_named(tiny_gpt2: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "other"
    shutil.copytree(tiny_gpt2, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(UnsupportedModel, match="'bert' is not supported; supported: gpt2, llama"):
        open_generation_engine(model_dir, GenerationSettings(), name="bert")


def test_a_sliding_window_caps_the_context(tmp_path: Path) -> None:
    model_dir = build_tiny_llama(tmp_path / "mistral", "mistral")
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "sliding_window": 64}))
    engine = open_generation_engine(
        model_dir, GenerationSettings(kv_cache_tokens=1024), name="window", device="cpu"
    )
    assert engine.max_model_len == 64
