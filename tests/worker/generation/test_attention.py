"""Paged attention over a ragged step against dense causal attention per sequence."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.generation.attention import AttentionPlan, paged_attention

BLOCK = 4
HEADS, KV_HEADS, DIM = 4, 2, 8


def test_mixed_step_matches_dense_attention_per_sequence() -> None:
    gen = torch.Generator().manual_seed(0)
    # (cached tokens, new tokens): decodes of different contexts, a first chunk,
    # a later chunk over cached context, and a decode at position 0
    runs = [(9, 1), (0, 7), (3, 1), (5, 6), (0, 1), (14, 1)]
    tables, next_block = [], 0
    for start, n in runs:
        need = -(-(start + n) // BLOCK)
        # blocks out of order, so a wrong slot mapping shows
        tables.append(list(range(next_block + need - 1, next_block - 1, -1)))
        next_block += need
    full = [
        (
            torch.randn(start + n, KV_HEADS, DIM, generator=gen),
            torch.randn(start + n, KV_HEADS, DIM, generator=gen),
            torch.randn(n, HEADS, DIM, generator=gen),
        )
        for start, n in runs
    ]
    k_cache = torch.zeros(next_block * BLOCK, KV_HEADS, DIM)
    v_cache = torch.zeros_like(k_cache)
    for (start, _), table, (keys, values, _) in zip(runs, tables, full, strict=True):
        for p in range(start):  # what earlier steps cached
            slot = table[p // BLOCK] * BLOCK + p % BLOCK
            k_cache[slot], v_cache[slot] = keys[p], values[p]
    plan = AttentionPlan.build(
        [s for s, _ in runs], [n for _, n in runs], tables, BLOCK, torch.device("cpu")
    )
    assert plan.decodes is not None and plan.decodes.rows.tolist() == [0, 8, 15, 16]
    assert [(c.offset, c.length) for c in plan.chunks] == [(1, 7), (9, 6)]

    q = torch.cat([query for _, _, query in full])
    k = torch.cat([keys[start:] for (start, _), (keys, _, _) in zip(runs, full, strict=True)])
    v = torch.cat([vals[start:] for (start, _), (_, vals, _) in zip(runs, full, strict=True)])
    out = paged_attention(q, k, v, k_cache, v_cache, plan, scale=0.5)

    offset = 0
    for (start, n), (keys, values, query) in zip(runs, full, strict=True):
        mask = torch.arange(start + n)[None, :] <= torch.arange(start, start + n)[:, None]
        want = F.scaled_dot_product_attention(
            query.transpose(0, 1),
            keys.repeat_interleave(HEADS // KV_HEADS, dim=1).transpose(0, 1),
            values.repeat_interleave(HEADS // KV_HEADS, dim=1).transpose(0, 1),
            attn_mask=mask,
            scale=0.5,
        ).transpose(0, 1)
        torch.testing.assert_close(out[offset : offset + n], want)
        offset += n
    # every new token's KV landed in the cache
    torch.testing.assert_close(k_cache[plan.slots], k)
