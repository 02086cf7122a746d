"""Picking the next token of one sequence from its logits."""

from __future__ import annotations

import secrets

import torch

from worker.generation.types import SamplingParams

__all__ = ["make_generator", "sample_token"]


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator of the sequence's own: its draws depend on nothing else."""
    generator = torch.Generator()
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next token from ``logits`` (``[vocab]``, float32 on CPU)."""
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if 0 < params.top_k < scores.shape[0]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        # drop a token when the ones before it already reach top_p; the first stays
        before = torch.cumsum(probs, dim=-1) - probs
        sorted_scores = sorted_scores.masked_fill(before >= params.top_p, float("-inf"))
        scores = torch.full_like(scores, float("-inf")).scatter(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
