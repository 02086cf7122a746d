"""Generative requests: Azure LLM token counts and arrivals, Mooncake shared prefixes.

Arrivals follow the one-shot workload's rules (Poisson at the target rate times the
Azure trace's load shape, clients in real cities by population, bursts and follow the
sun): see :class:`simulator.workload.Workload`. Each request's (prompt, output) token
counts are a pair drawn from the Azure LLM inference traces, code and conversation
together (Patel et al., "Splitwise", ISCA 2024; CC-BY 4.0).

Shared prefixes come from the Mooncake conversation trace (FAST'25): its ``hash_ids``
are chained prefix blocks, so two requests share their first ``k`` ids exactly when
they share their first ``k`` blocks. The fleet's users are ``tenants``: cities get
tenants in proportion to population (a city too small for one shares another's), and
each tenant replays the Mooncake trace in order from its own random starting record,
with its own id space, so the turns of a conversation follow one another and share the
prefix of the turns before.
A request's prompt of ``n`` tokens holds ``n // block_tokens`` blocks: its Mooncake
record's chain stretched over them (each Mooncake block becomes ``k`` consecutive blocks
of ours), so a prompt shares the same fraction of its length as its Mooncake record did.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from simulator.data import Places, Trace
from simulator.sources import open_trace
from simulator.workload import Burst, Workload

__all__ = ["GenSlice", "GenWorkload", "Prefixes", "azure_mix", "load_prefixes"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Prefixes:
    """The Mooncake records' prefix block ids, in trace order."""

    chains: tuple[tuple[int, ...], ...]


def load_prefixes(data: Path | None = None) -> Prefixes:
    """From the shipped extract (``data=None``) or the full file under ``data``."""
    rows = []
    with open_trace(data, "mooncake") as f:
        for line in f:
            rec = json.loads(line)
            rows.append((rec["timestamp"], tuple(int(h) for h in rec["hash_ids"])))
    rows.sort(key=lambda r: r[0])
    return Prefixes(tuple(c for _, c in rows))


def azure_mix(code: Trace, conv: Trace) -> Trace:
    """Both Azure traces as one: their arrivals merged, each keeping its own token pairs."""
    t = np.concatenate([code.offsets_s, conv.offsets_s])
    order = np.argsort(t, kind="stable")
    return Trace(
        "azure",
        t[order] - t.min(),
        np.concatenate([code.input_tokens, conv.input_tokens])[order],
        np.concatenate([code.output_tokens, conv.output_tokens])[order],
    )


@dataclass(frozen=True, slots=True)
class GenSlice:
    t_ms: FloatArray
    client: IntArray
    tenant: IntArray
    record: IntArray  # Mooncake record index
    prompt: IntArray  # tokens
    output: IntArray  # tokens


class GenWorkload:
    def __init__(
        self,
        places: Places,
        trace: Trace,
        prefixes: Prefixes,
        rate_rps: float,
        *,
        bursts: tuple[Burst, ...] = (),
        follow_the_sun_day_s: float = 0.0,
        tenants: int = 4000,
        block_tokens: int = 64,
        max_prompt: int = 8192,
        seed: int = 1,
    ) -> None:
        self.arrivals = Workload(
            places, trace, rate_rps, bursts=bursts, follow_the_sun_day_s=follow_the_sun_day_s
        )
        self.places = places
        self.prefixes = prefixes
        self.block_tokens = block_tokens
        self.rng = np.random.default_rng(seed)
        self.prompt_tokens = np.clip(trace.input_tokens, 1, max_prompt).astype(np.int64)
        self.output_tokens = np.maximum(trace.output_tokens, 1).astype(np.int64)
        share = places.population / places.population.sum()
        per_city = np.round(share * tenants).astype(np.int64)
        first = np.concatenate([[0], np.cumsum(per_city)[:-1]]).astype(np.int64)
        n = max(1, int(per_city.sum()))
        # a city too small for a tenant of its own shares one (by its index)
        small = per_city == 0
        first[small] = np.arange(len(per_city))[small] % n
        self.city_first = first
        self.city_tenants = np.maximum(per_city, 1)
        self.n_tenants = n
        self.cursor = self.rng.integers(0, len(prefixes.chains), n).astype(np.int64)
        self.mean_prompt = float(self.prompt_tokens.mean())
        self.mean_output = float(self.output_tokens.mean())

    def chain(self, tenant: int, record: int, prompt: int) -> list[int]:
        """The request's prefix block ids (tenant's id space), ``prompt // block`` at most."""
        ids = self.prefixes.chains[record]
        nb = prompt // self.block_tokens
        if not ids or nb <= 0:
            return []
        k = -(-nb // len(ids))  # our blocks per Mooncake block
        base = tenant << 32
        used = ids[: -(-nb // k)]
        return [base | (h << 8) | j for h in used for j in range(k)][:nb]

    def slice(self, t0_ms: float, dt_ms: float) -> GenSlice:
        a = self.arrivals
        t_s = t0_ms / 1000.0
        key = (
            int(t_s) if a.day_s > 0 else 0,
            tuple(b.start_s <= t_s < b.end_s for b in a.bursts),
        )
        if key != a._key:
            w, a._scale = a.weights(t_s)
            a._cum = np.cumsum(w)
            a._key = key
        rng = self.rng
        n = int(rng.poisson(a.rate_at(t_s) * a._scale * dt_ms / 1000.0))
        t = np.sort(rng.uniform(t0_ms, t0_ms + dt_ms, n))
        client = np.minimum(
            np.searchsorted(a._cum, rng.uniform(0, a._cum[-1], n)), len(a._cum) - 1
        ).astype(np.int64)
        tenant = self.city_first[client] + (rng.random(n) * self.city_tenants[client]).astype(
            np.int64
        )
        # each tenant walks its records in order: the k-th request of a tenant in this slice
        order = np.argsort(tenant, kind="stable")
        ts = tenant[order]
        first = np.ones(n, dtype=bool)
        first[1:] = ts[1:] != ts[:-1]
        rank = np.arange(n) - np.maximum.accumulate(np.where(first, np.arange(n), 0))
        record = np.empty(n, dtype=np.int64)
        record[order] = (self.cursor[ts] + rank) % len(self.prefixes.chains)
        np.add.at(self.cursor, tenant, 1)
        pick = rng.integers(0, len(self.prompt_tokens), n)
        return GenSlice(
            t, client, tenant, record, self.prompt_tokens[pick], self.output_tokens[pick]
        )
