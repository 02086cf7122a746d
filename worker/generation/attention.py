"""Attention over the paged KV cache for a ragged batch.

One forward step carries, for each sequence, a run of new tokens (one for a
decode, a chunk for a prefill) that continue ``start`` tokens already cached.
:class:`AttentionPlan` turns block tables into index tensors once per step;
:func:`paged_attention` then, in every layer, writes the new keys and values
into their slots, gathers each sequence's whole context into a padded batch and
runs ``scaled_dot_product_attention`` with a causal mask per sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AttentionPlan", "paged_attention"]


@dataclass(frozen=True)
class AttentionPlan:
    # [T] cache slot of each new token (flattened in batch order)
    slots: torch.Tensor
    # [T] position of each new token in its sequence
    positions: torch.Tensor
    # [B, L] cache slot of every context position of each sequence (padded)
    context_slots: torch.Tensor
    # [B, Q] index into the flat new tokens of each (sequence, query row) (padded)
    query_index: torch.Tensor
    # [T] the (sequence, row) of each flat token, to unpad the attention output
    flat_batch: torch.Tensor
    flat_row: torch.Tensor
    # [B, 1, Q, L] which keys each query row may attend to
    mask: torch.Tensor

    @classmethod
    def build(
        cls,
        starts: Sequence[int],
        lengths: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionPlan:
        batch = len(starts)
        max_q = max(lengths)
        max_ctx = max(s + n for s, n in zip(starts, lengths, strict=True))
        max_blocks = max(len(t) for t in block_tables)
        tables = torch.zeros(batch, max_blocks, dtype=torch.long)
        for b, table in enumerate(block_tables):
            tables[b, : len(table)] = torch.tensor(table, dtype=torch.long)
        start_t = torch.tensor(starts, dtype=torch.long)
        len_t = torch.tensor(lengths, dtype=torch.long)
        ctx_t = start_t + len_t

        # every context position of every sequence -> slot; padding -> slot 0
        ctx_pos = torch.arange(max_ctx).expand(batch, max_ctx)
        ctx_valid = ctx_pos < ctx_t[:, None]
        ctx_pos = torch.where(ctx_valid, ctx_pos, 0)
        context_slots = tables.gather(1, ctx_pos // block_size) * block_size + ctx_pos % block_size

        rows = torch.arange(max_q).expand(batch, max_q)
        row_valid = rows < len_t[:, None]
        offsets = torch.cumsum(len_t, 0) - len_t
        query_index = torch.where(row_valid, offsets[:, None] + rows, 0)
        flat_batch = torch.repeat_interleave(torch.arange(batch), len_t)
        flat_row = torch.arange(int(len_t.sum())) - offsets[flat_batch]
        positions = start_t[flat_batch] + flat_row
        slots = context_slots[flat_batch, positions]

        q_pos = start_t[:, None] + rows  # [B, Q]
        key_pos = torch.arange(max_ctx)
        mask = key_pos[None, None, :] <= q_pos[:, :, None]
        # padded query rows attend to key 0 only, so no row is all -inf (NaN)
        mask = torch.where(row_valid[:, :, None], mask, key_pos[None, None, :] == 0)
        return cls(
            slots=slots.to(device),
            positions=positions.to(device),
            context_slots=context_slots.to(device),
            query_index=query_index.to(device),
            flat_batch=flat_batch.to(device),
            flat_row=flat_row.to(device),
            mask=mask[:, None, :, :].to(device),
        )


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    plan: AttentionPlan,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal attention of the new tokens over their sequences' cached context.

    ``q`` is ``[T, H, D]``, ``k``/``v`` are ``[T, Hkv, D]`` and the caches are
    ``[slots, Hkv, D]``. Returns ``[T, H, D]``.
    """
    k_cache[plan.slots] = k
    v_cache[plan.slots] = v
    keys = k_cache[plan.context_slots].transpose(1, 2)  # [B, Hkv, L, D]
    values = v_cache[plan.context_slots].transpose(1, 2)
    queries = q[plan.query_index].transpose(1, 2)  # [B, H, Q, D]
    if keys.shape[1] != queries.shape[1]:
        group = queries.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=plan.mask, scale=scale)
    return out.transpose(1, 2)[plan.flat_batch, plan.flat_row]  # [T, H, D]
