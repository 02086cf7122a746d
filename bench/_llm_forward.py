"""The engine's forward pass alone: its decode ceiling and the cost of mixed steps.

Both drive :class:`worker.generation.runner.ModelRunner` directly, with no
scheduler, sampling, detokenization or event loop around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 16


@dataclass(frozen=True, slots=True)
class StepCosts:
    """Milliseconds per forward step: ``batch`` decodes, one prefill chunk, both in one step."""

    batch: int
    chunk: int
    decode_ms: float
    prefill_ms: float
    mixed_ms: float


class _Bench:
    """A runner with ``seqs`` sequences of whole-context block tables."""

    def __init__(self, model_dir: Path, device: str, seqs: int, threads: int) -> None:
        import torch

        from worker.generation.model import load_decoder
        from worker.generation.runner import ModelRunner, StepInput

        dev = torch.device(device)
        dtype = torch.float32
        if dev.type == "cpu":
            torch.set_num_threads(threads)
        else:  # what the engine picks on CUDA
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        model = load_decoder(model_dir, dev, dtype)
        self.limit = model.shape.max_positions
        self.vocab = model.shape.vocab_size
        per_seq = -(-self.limit // BLOCK)
        self.runner = ModelRunner(model, seqs * per_seq, BLOCK, dev, dtype)
        self.tables = [list(range(i * per_seq, (i + 1) * per_seq)) for i in range(seqs)]
        self.step = StepInput

    def prefill(self, seq: int, length: int) -> None:
        tokens = [(7 * j) % self.vocab for j in range(length)]
        self.runner.forward([self.step(tokens, 0, self.tables[seq], True)])

    def decodes(self, batch: int, pos: int) -> list[Any]:
        return [self.step([1], pos, self.tables[i], True) for i in range(batch)]


def _timed(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call of ``fn`` over about ``seconds``, after three warm-up calls."""
    for _ in range(3):
        fn()
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return (time.perf_counter() - start) / n


def raw_ceiling(
    model_dir: Path, device: str, batch: int, context: int, seconds: float, threads: int
) -> float:
    """Tokens/s decoding ``batch`` sequences at a mean context of ``context`` tokens."""
    b = _Bench(model_dir, device, batch, threads)
    # Prefill to just below ``context``, then decode over the 32 positions from there,
    # round and round (overwriting that KV), so the mean context is ``context``.
    first = max(1, min(context, b.limit - 32) - 16)
    for i in range(batch):
        b.prefill(i, first)
    pos = first

    def step() -> None:
        nonlocal pos
        b.runner.forward(b.decodes(batch, pos))
        pos = pos + 1 if pos + 1 < first + 32 else first

    return batch / _timed(step, seconds)


def step_costs(
    model_dir: Path, device: str, batch: int, context: int, chunk: int, threads: int
) -> StepCosts:
    """What one ``chunk``-token prefill costs alone, beside ``batch`` decodes, and mixed in."""
    b = _Bench(model_dir, device, batch + 1, threads)
    for i in range(batch):
        b.prefill(i, context)
    decodes = b.decodes(batch, context)  # rewrites the same position: timing only
    chunk_in = b.step([(5 * j) % b.vocab for j in range(chunk)], 0, b.tables[batch], True)
    seconds = 0.5
    return StepCosts(
        batch=batch,
        chunk=chunk,
        decode_ms=1e3 * _timed(lambda: b.runner.forward(decodes), seconds),
        prefill_ms=1e3 * _timed(lambda: b.runner.forward([chunk_in]), seconds),
        mixed_ms=1e3 * _timed(lambda: b.runner.forward([*decodes, chunk_in]), seconds),
    )
