"""The shipped tiny model: built once, atomically, loadable by transformers and the engine."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from worker.generation.factory import open_generation_engine
from worker.generation.settings import GenerationSettings
from worker.generation.tiny_lm import TinyLmRecipe, ensure_tiny_lm, stdlib_docstrings
from worker.generation.types import SamplingParams

# the real recipe's mechanics at a few seconds' cost
SMALL = TinyLmRecipe(
    vocab_size=512, n_layer=1, n_embd=32, n_head=2, n_positions=64,
    corpus_chars=40_000, seq_len=32, batch_size=4, steps=3,
)  # fmt: skip


def test_corpus_is_the_same_on_every_call() -> None:
    first = list(stdlib_docstrings(20_000))
    assert first == list(stdlib_docstrings(20_000))
    assert sum(map(len, first)) >= 20_000
    assert all("\n" not in p for doc in first for p in doc.split("\n\n"))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_tiny_lm(tmp_path, SMALL), range(2)))
    assert paths[0] == paths[1] == tmp_path / SMALL.dirname
    built = paths[0]
    model_file = built / "model.safetensors"
    mtime = model_file.stat().st_mtime_ns
    assert ensure_tiny_lm(tmp_path, SMALL) == built
    assert model_file.stat().st_mtime_ns == mtime
    # nothing half-built is left next to it
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [SMALL.dirname]
    config = json.loads((built / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in config["chat_template"]
    assert json.loads((built / "config.json").read_text())["model_type"] == "gpt2"


@pytest.mark.slow
@pytest.mark.timeout(1200)
async def test_shipped_model_generates_text_like_transformers() -> None:
    from transformers import AutoModelForCausalLM

    # the machine's cached copy, as the worker uses it (minutes when cold)
    model_dir = ensure_tiny_lm()
    hf = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    engine = open_generation_engine(model_dir, GenerationSettings(), name="tiny", device="cpu")
    await engine.start()
    try:
        prompt = engine.encode("Return the number of")
        greedy = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
        events = [e async for e in engine.generate(prompt, greedy, "t")]
    finally:
        await engine.stop()
    tokens = [e.token_id for e in events if e.token_id is not None]
    text = "".join(e.text for e in events)
    assert sum(ch.isalpha() for ch in text) > 10
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + tokens])).logits[0]
    for i, token in enumerate(tokens):
        row = logits[len(prompt) - 1 + i]
        assert float(row[token]) >= float(row.max()) - 1e-4
