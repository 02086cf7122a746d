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
    # [B, N] the blocks holding each row's context (padded with block 0)
    blocks: torch.Tensor
    # [B, 1, 1, N * block_size] the real context of each row; None when every block is full
    mask: torch.Tensor | None


@dataclass(frozen=True)
class ChunkGroup:
    """One sequence's run of several new tokens: flat rows ``offset .. offset + length``."""

    offset: int
    length: int
    # [N] the blocks holding the context; None when the chunk is the whole context
    blocks: torch.Tensor | None
    # [1, 1, length, N * block_size] causal mask shifted by the cached tokens; None when
    # causal from 0
    mask: torch.Tensor | None


@dataclass(frozen=True)
class AttentionPlan:
    # [T] cache slot of each new token (flattened in batch order)
    slots: torch.Tensor
    # [T] position of each new token in its sequence
    positions: torch.Tensor
    decodes: DecodeGroup | None
    chunks: tuple[ChunkGroup, ...]
    block_size: int

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
            start_t = torch.tensor([starts[b] for b in decoding], dtype=torch.long)
            width = int(start_t.max()) // block_size + 1  # blocks of the longest context
            tables = torch.tensor(
                [list(block_tables[b][:width]) + [0] * (width - len(block_tables[b][:width]))
                 for b in decoding],
                dtype=torch.long,
            )  # fmt: skip
            rows = torch.tensor([offsets[b] for b in decoding], dtype=torch.long)
            slots[rows] = (
                tables.gather(1, (start_t // block_size)[:, None])[:, 0] * block_size
                + start_t % block_size
            )
            positions[rows] = start_t
            key_pos = torch.arange(width * block_size)
            mask = None
            if (start_t + 1 != width * block_size).any():
                mask = (key_pos[None, :] <= start_t[:, None])[:, None, None, :].to(device)
            decodes = DecodeGroup(rows.to(device), tables.to(device), mask)
        chunks = []
        for b, n in enumerate(lengths):
            if n == 1:
                continue
            start, off = starts[b], offsets[b]
            width = -(-(start + n) // block_size)
            table = torch.tensor(block_tables[b][:width], dtype=torch.long)
            pos = torch.arange(start, start + n)
            slots[off : off + n] = table[pos // block_size] * block_size + pos % block_size
            positions[off : off + n] = pos
            chunks.append(_chunk(off, start, n, table, block_size, device))
        return cls(
            slots=slots.to(device),
            positions=positions.to(device),
            decodes=decodes,
            chunks=tuple(chunks),
            block_size=block_size,
        )


def _chunk(
    offset: int, start: int, n: int, table: torch.Tensor, block_size: int, device: torch.device
) -> ChunkGroup:
    if start == 0:  # the chunk is its whole context: plain causal attention over itself
        return ChunkGroup(offset, n, None, None)
    q_pos = torch.arange(start, start + n)
    mask = torch.arange(len(table) * block_size)[None, :] <= q_pos[:, None]  # [n, L]
    return ChunkGroup(offset, n, table.to(device), mask[None, None].to(device))


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
        return _decode(q, k_cache, v_cache, d, plan.block_size, scale)
    out = torch.empty_like(q)
    if d is not None:
        out[d.rows] = _decode(q, k_cache, v_cache, d, plan.block_size, scale)
    for c in plan.chunks:
        rows = slice(c.offset, c.offset + c.length)
        queries = q[rows].transpose(0, 1)[None]  # [1, H, n, D]
        if c.blocks is None:
            keys, values = k[rows], v[rows]
        else:
            keys, values = (
                _gather(k_cache, c.blocks, plan.block_size),
                _gather(v_cache, c.blocks, plan.block_size),
            )
        out[rows] = _attend(
            queries,
            keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None],
            c.mask,
            c.mask is None,
            scale,
        )[0].transpose(0, 1)
    return out


def _gather(cache: torch.Tensor, blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., N * block_size, Hkv, D]``: the cache rows of whole blocks, in table order."""
    by_block = cache.view(-1, block_size, *cache.shape[1:])
    # index_select copies whole blocks; advanced indexing is several times slower on CPU
    rows = by_block.index_select(0, blocks.reshape(-1))
    return rows.view(*blocks.shape[:-1], blocks.shape[-1] * block_size, *cache.shape[1:])


def _decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    d: DecodeGroup,
    block_size: int,
    scale: float | None,
) -> torch.Tensor:
    """``[B, H, D]``: each decode row over its own context."""
    queries = q[d.rows][:, :, None, :]  # [B, H, 1, D]
    keys = _gather(k_cache, d.blocks, block_size).transpose(1, 2)  # [B, Hkv, L, D]
    values = _gather(v_cache, d.blocks, block_size).transpose(1, 2)
    return _attend(queries, keys, values, d.mask, False, scale)[:, :, 0, :]
