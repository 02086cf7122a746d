"""Attention over the paged KV cache for a ragged batch.

One forward step carries, for each sequence, a run of new tokens (one for a
decode, a chunk for a prefill) that continue ``start`` tokens already cached.
:class:`AttentionPlan` turns block tables into index tensors once per step, in
groups, so that no row is padded to another sequence's chunk: all single-token
rows (the decodes) attend together with a query length of one, and each longer
chunk (a prefill) attends alone with a causal mask. :func:`paged_attention`
then, in every layer, writes the new keys and values into their slots, runs one
``scaled_dot_product_attention`` per group over the gathered context and puts
the results back in the flat token order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AttentionPlan", "ChunkGroup", "DecodeGroup", "paged_attention"]


@dataclass(frozen=True)
class DecodeGroup:
    """The sequences with one new token each: one query row per sequence."""

    # [B] index of each row in the flat new tokens
    rows: torch.Tensor
    # [B, L] cache slot of every context position (padded with slot 0)
    context_slots: torch.Tensor
    # [B, 1, 1, L] the real context of each row; None when all have the same length
    mask: torch.Tensor | None


@dataclass(frozen=True)
class ChunkGroup:
    """One sequence's run of several new tokens: flat rows ``offset .. offset + length``."""

    offset: int
    length: int
    # [L] cache slot of every context position; None when the chunk is the whole context
    context_slots: torch.Tensor | None
    # [1, 1, length, L] causal mask shifted by the cached tokens; None when causal from 0
    mask: torch.Tensor | None


@dataclass(frozen=True)
class AttentionPlan:
    # [T] cache slot of each new token (flattened in batch order)
    slots: torch.Tensor
    # [T] position of each new token in its sequence
    positions: torch.Tensor
    decodes: DecodeGroup | None
    chunks: tuple[ChunkGroup, ...]

    @classmethod
    def build(
        cls,
        starts: Sequence[int],
        lengths: Sequence[int],
        block_tables: Sequence[Sequence[int]],
        block_size: int,
        device: torch.device,
    ) -> AttentionPlan:
        total = sum(lengths)
        offsets = [0]
        for n in lengths:
            offsets.append(offsets[-1] + n)
        slots = torch.empty(total, dtype=torch.long)
        positions = torch.empty(total, dtype=torch.long)
        decoding = [b for b, n in enumerate(lengths) if n == 1]
        decodes = None
        if decoding:
            width = max(len(block_tables[b]) for b in decoding)
            tables = torch.tensor(
                [list(block_tables[b]) + [0] * (width - len(block_tables[b])) for b in decoding],
                dtype=torch.long,
            )
            start_t = torch.tensor([starts[b] for b in decoding], dtype=torch.long)
            ctx_len = start_t + 1
            longest = int(ctx_len.max())
            ctx_pos = torch.arange(longest).expand(len(decoding), longest)
            valid = ctx_pos < ctx_len[:, None]
            ctx_pos = torch.where(valid, ctx_pos, 0)  # padding -> slot of position 0
            context_slots = (
                tables.gather(1, ctx_pos // block_size) * block_size + ctx_pos % block_size
            )
            rows = torch.tensor([offsets[b] for b in decoding], dtype=torch.long)
            slots[rows] = context_slots[torch.arange(len(decoding)), start_t]
            positions[rows] = start_t
            mask = None
            if int(ctx_len.min()) != longest:
                mask = valid[:, None, None, :].to(device)
            decodes = DecodeGroup(rows.to(device), context_slots.to(device), mask)
        chunks = []
        for b, n in enumerate(lengths):
            if n == 1:
                continue
            start, off = starts[b], offsets[b]
            table = torch.tensor(block_tables[b], dtype=torch.long)
            pos = torch.arange(start + n)
            ctx = table[pos // block_size] * block_size + pos % block_size
            slots[off : off + n] = ctx[start:]
            positions[off : off + n] = pos[start:]
            chunks.append(_chunk(off, start, n, ctx, device))
        return cls(
            slots=slots.to(device),
            positions=positions.to(device),
            decodes=decodes,
            chunks=tuple(chunks),
        )


def _chunk(offset: int, start: int, n: int, ctx: torch.Tensor, device: torch.device) -> ChunkGroup:
    if start == 0:  # the chunk is its whole context: plain causal attention over itself
        return ChunkGroup(offset, n, None, None)
    q_pos = torch.arange(start, start + n)
    mask = torch.arange(start + n)[None, :] <= q_pos[:, None]  # [n, L]
    return ChunkGroup(offset, n, ctx.to(device), mask[None, None].to(device))


def _attend(
    queries: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None,
) -> torch.Tensor:
    """``[B, H, Q, D]`` queries over ``[B, Hkv, L, D]`` keys and values."""
    if keys.shape[1] != queries.shape[1]:
        group = queries.shape[1] // keys.shape[1]
        keys = keys.repeat_interleave(group, dim=1)
        values = values.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(
        queries, keys, values, attn_mask=mask, is_causal=causal, scale=scale
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
    d = plan.decodes
    if d is not None and not plan.chunks:  # decodes only: the rows are already in order
        return _decode(q, k_cache, v_cache, d, scale)
    out = torch.empty_like(q)
    if d is not None:
        out[d.rows] = _decode(q, k_cache, v_cache, d, scale)
    for c in plan.chunks:
        rows = slice(c.offset, c.offset + c.length)
        queries = q[rows].transpose(0, 1)[None]  # [1, H, n, D]
        if c.context_slots is None:
            keys, values = k[rows], v[rows]
        else:
            keys, values = k_cache[c.context_slots], v_cache[c.context_slots]
        out[rows] = _attend(
            queries,
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            c.mask,
            c.mask is None,
            scale,
        )[0].transpose(0, 1)
    return out


def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    d: DecodeGroup,
    scale: float | None,
) -> torch.Tensor:
    """``[B, H, D]``: each decode row over its own context."""
    queries = q[d.rows][:, :, None, :]  # [B, H, 1, D]
    keys = k_cache[d.context_slots].transpose(1, 2)  # [B, Hkv, L, D]
    values = v_cache[d.context_slots].transpose(1, 2)
    return _attend(queries, keys, values, d.mask, False, scale)[:, :, 0, :]
