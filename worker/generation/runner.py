"""The model runner: KV tensors on the device and one forward pass per step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from worker.generation.attention import AttentionPlan
from worker.generation.model import DecoderLM

__all__ = ["ModelRunner", "StepInput", "kv_bytes_per_token"]


@dataclass(frozen=True)
class StepInput:
    """One sequence's share of a forward step."""

    token_ids: Sequence[int]  # the new tokens, continuing ``start`` cached ones
    start: int
    block_table: Sequence[int]
    wants_logits: bool  # the chunk ends the known tokens: sample the next one


def kv_bytes_per_token(model: DecoderLM, dtype: torch.dtype) -> int:
    s = model.shape
    return (
        2 * s.num_layers * s.num_kv_heads * s.head_dim * torch.empty((), dtype=dtype).element_size()
    )


class ModelRunner:
    def __init__(
        self,
        model: DecoderLM,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        s = model.shape
        self.model = model
        self.block_size = block_size
        self.device = device
        shape = (s.num_layers, num_blocks * block_size, s.num_kv_heads, s.head_dim)
        self.k_cache = torch.zeros(shape, dtype=dtype, device=device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=device)

    @torch.inference_mode()
    def forward(self, inputs: Sequence[StepInput]) -> torch.Tensor:
        """Logits ``[n, vocab]`` (float32, on CPU) for the inputs that want them, in order."""
        plan = AttentionPlan.build(
            [i.start for i in inputs],
            [len(i.token_ids) for i in inputs],
            [i.block_table for i in inputs],
            self.block_size,
            self.device,
        )
        flat = [t for i in inputs for t in i.token_ids]
        token_ids = torch.tensor(flat, dtype=torch.long, device=self.device)
        hidden = self.model.hidden(token_ids, plan, self.k_cache, self.v_cache)
        ends, end = [], 0
        for i in inputs:
            end += len(i.token_ids)
            if i.wants_logits:
                ends.append(end - 1)
        if not ends:
            return torch.empty(0, self.model.shape.vocab_size)
        picked = hidden[torch.tensor(ends, dtype=torch.long, device=self.device)]
        return self.model.logits(picked).float().cpu()
