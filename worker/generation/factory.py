"""Open a generation engine from a Hugging Face-format model directory."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from worker.generation.engine import Engine, Tokenizer
from worker.generation.kv_cache import BlockPool
from worker.generation.model import load_decoder
from worker.generation.runner import ModelRunner, kv_bytes_per_token
from worker.generation.scheduler import Scheduler, policy_named
from worker.generation.settings import GenerationSettings

__all__ = ["load_tokenizer", "open_generation_engine"]


def open_generation_engine(
    model_dir: Path,
    settings: GenerationSettings,
    *,
    name: str,
    device: str | None = None,
) -> Engine:
    """Load the model and tokenizer in ``model_dir`` and size the KV cache.

    The engine is returned stopped: ``await engine.start()`` before use.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json (a Hugging Face model directory)")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _dtype(settings.dtype, dev)
    if settings.threads is not None and dev.type == "cpu":
        torch.set_num_threads(settings.threads)
    model = load_decoder(model_dir, dev, dtype)
    kv_tokens = _kv_tokens(settings, dev, kv_bytes_per_token(model, dtype))
    num_blocks = max(1, kv_tokens // settings.block_size)
    max_model_len = min(
        model.shape.max_positions,
        settings.max_model_len or model.shape.max_positions,
        num_blocks * settings.block_size,
    )
    runner = ModelRunner(model, num_blocks, settings.block_size, dev, dtype)
    scheduler = Scheduler(
        BlockPool(num_blocks, prefix_caching=settings.prefix_caching),
        block_size=settings.block_size,
        max_num_seqs=settings.max_num_seqs,
        max_batched_tokens=settings.max_batched_tokens,
        prefill_chunk=settings.prefill_chunk,
        policy=policy_named(settings.policy),
    )
    tokenizer, eos = load_tokenizer(model_dir)
    return Engine(
        name=name,
        runner=runner,
        scheduler=scheduler,
        tokenizer=tokenizer,
        max_model_len=max_model_len,
        eos_token_ids=eos,
    )


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            name
        ]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _kv_tokens(settings: GenerationSettings, device: torch.device, per_token: int) -> int:
    if settings.kv_cache_tokens is not None:
        return settings.kv_cache_tokens
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * settings.gpu_memory_fraction) // per_token
    return settings.default_kv_cache_tokens


def load_tokenizer(model_dir: Path) -> tuple[Tokenizer, list[int]]:
    """The model's tokenizer and its end-of-sequence token ids."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(model_dir))
    raw = hf.backend_tokenizer  # stateless calls: safe from the engine thread

    def encode(text: str) -> list[int]:
        return list(raw.encode(text, add_special_tokens=True).ids)

    def decode(ids: Sequence[int]) -> str:
        return str(raw.decode(list(ids), skip_special_tokens=True))

    def chat(messages: Sequence[dict[str, str]]) -> list[int]:
        if hf.chat_template:
            text = hf.apply_chat_template(
                list(messages), add_generation_prompt=True, tokenize=False
            )
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(raw.encode(str(text), add_special_tokens=False).ids)

    return Tokenizer(encode, decode, chat), _eos_ids(model_dir, hf.eos_token_id)


def _eos_ids(model_dir: Path, tokenizer_eos: int | None) -> list[int]:
    found: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            value: Any = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(value, int):
                found.append(value)
            elif isinstance(value, list):
                found.extend(int(v) for v in value)
            if found:
                break
    if tokenizer_eos is not None and tokenizer_eos not in found:
        found.append(int(tokenizer_eos))
    return found
