"""The engine on CUDA: fp32 gives the CPU's greedy tokens; bf16 runs the same loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.generation.test_engine_greedy import assert_greedy, hf_greedy
from worker.generation.factory import open_generation_engine
from worker.generation.settings import GenerationSettings
from worker.generation.types import SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
PROMPTS = [[1, 2, 3], list(range(5, 60)), [9] * 20]


async def greedy_tokens(model_dir: Path, device: str, dtype: str) -> list[list[int]]:
    settings = GenerationSettings(kv_cache_tokens=2048, block_size=16, dtype=dtype)  # type: ignore[arg-type]
    engine = open_generation_engine(model_dir, settings, name=device, device=device)
    await engine.start()
    try:
        out = []
        for prompt in PROMPTS:
            out.append([e.token_id async for e in engine.generate(prompt, GREEDY, "g")])
        return out  # type: ignore[return-value]
    finally:
        await engine.stop()


async def test_fp32_on_cuda_is_greedy_like_transformers(tiny_gpt2: Path, hf_gpt2: Any) -> None:
    outputs = await greedy_tokens(tiny_gpt2, "cuda", "float32")
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        assert_greedy(hf_gpt2, prompt, output, hf_greedy(hf_gpt2, prompt, len(output)))


async def test_bf16_on_cuda_generates(tiny_gpt2: Path) -> None:
    for tokens in await greedy_tokens(tiny_gpt2, "cuda", "bfloat16"):
        assert len(tokens) == 16 and all(t is not None for t in tokens)
