"""Pricing a generative request: which region and which worker answer it soonest.

For each candidate worker ``w`` in region ``R``::

    cost(R, w) = rtt(C, R) + wait_for_slot(w) + backlog(w)
                 + prefill(prompt not cached at w) / (1 - busy(w)) + decode(max_tokens)

``backlog`` is the prefill work of sequences already at ``w`` that delays this one's first
token (continuous batching interleaves prefills, so it grows with the load). The prefill
this request adds is charged with the delay it causes the prefills queued behind it
(``busy``: the share of ``w``'s time spent prefilling, from its load), so a cached prefix
is worth more on a busy worker; ``decode`` prices the load by the step time's growth with
the batch (``tpot_ms`` alone, ``tpot_load_factor`` more at a full batch).

The router cannot tokenize, so a prompt's *prefix key* is a chain of hashes over
fixed-size character blocks of its text (:func:`prefix_key`); block ``i``'s hash covers
every character before it, so two prompts share their first ``k`` hashes exactly when
they share their first ``k`` blocks. Where a prefix is cached is learned, not reported:
:class:`PrefixAffinity` remembers which workers this router sent each block hash to
(bounded, least recently used first out). Affinity is bounded by load: a worker whose
load is at or above ``(1 + epsilon) * mean load + slack`` gets no cache credit, so a hot
prefix spills to the next worker (consistent hashing with bounded loads) instead of
melting one. Everything is passed in; the policy holds only its settings and the
affinity table, which the caller updates with :meth:`KvAwarePolicy.record`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "GenerativeCosts",
    "GenerativeRequest",
    "KvAwarePolicy",
    "LeastLoadedGenerative",
    "PrefixAffinity",
    "RoundRobinGenerative",
    "WorkerCandidate",
    "WorkerChoice",
    "prefix_key",
]

DEFAULT_BLOCK_CHARS = 64  # about 16 tokens of English text at ~4 characters a token


def prefix_key(
    prompt: str, block_chars: int = DEFAULT_BLOCK_CHARS, max_blocks: int = 256
) -> tuple[bytes, ...]:
    """Chained hashes of the prompt's full ``block_chars`` blocks (a partial tail is not
    a block: engines cache full blocks only)."""
    out: list[bytes] = []
    parent = b""
    n = min(len(prompt) // block_chars, max_blocks)
    data = prompt.encode("utf-8", "surrogatepass") if n else b""
    if n and len(data) == len(prompt):  # ASCII: character offsets are byte offsets
        blocks = [data[i * block_chars : (i + 1) * block_chars] for i in range(n)]
    else:
        blocks = [prompt[i * block_chars : (i + 1) * block_chars].encode() for i in range(n)]
    for block in blocks:
        parent = hashlib.blake2b(parent + block, digest_size=8).digest()
        out.append(parent)
    return tuple(out)


class PrefixAffinity:
    """Which workers this router sent each prefix block to, most recent last.

    Bounded: at most ``capacity`` block hashes, each with at most ``ways`` workers;
    the least recently used hash goes first. Memory is about 100 bytes per hash.
    ``worker_blocks`` (when set) models each worker's own cache as an LRU of that many
    router blocks (its KV capacity in characters / block size): a block the worker must
    have evicted since stops counting for it.
    """

    def __init__(
        self, capacity: int = 200_000, ways: int = 4, worker_blocks: int | None = None
    ) -> None:
        self.capacity = capacity
        self.ways = ways
        self.worker_blocks = worker_blocks
        self._table: OrderedDict[bytes, list[str]] = OrderedDict()
        self._per_worker: dict[str, OrderedDict[bytes, None]] = {}

    def __len__(self) -> int:
        return len(self._table)

    def record(self, key: Sequence[bytes], worker_id: str) -> None:
        for h in key:
            holders = self._table.get(h)
            if holders is None:
                self._table[h] = [worker_id]
                if len(self._table) > self.capacity:
                    self._table.popitem(last=False)
                continue
            self._table.move_to_end(h)
            if holders and holders[-1] == worker_id:
                continue
            if worker_id in holders:
                holders.remove(worker_id)
            holders.append(worker_id)
            if len(holders) > self.ways:
                del holders[0]
        if self.worker_blocks is not None:
            self._model_eviction(key, worker_id, self.worker_blocks)

    def _model_eviction(self, key: Sequence[bytes], worker_id: str, limit: int) -> None:
        lru = self._per_worker.setdefault(worker_id, OrderedDict())
        for h in key:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > limit:
            gone, _ = lru.popitem(last=False)
            holders = self._table.get(gone)
            if holders is not None and worker_id in holders:
                holders.remove(worker_id)

    def forget_worker(self, worker_id: str) -> None:
        """A worker restarted or left: its cache is gone."""
        self._per_worker.pop(worker_id, None)
        for holders in self._table.values():
            if worker_id in holders:
                holders.remove(worker_id)

    def matched_blocks(self, key: Sequence[bytes]) -> dict[str, int]:
        """Per worker, how many leading blocks of ``key`` it was sent (and so may cache).

        Hashes are chained, so a worker listed at block ``i`` was sent every block before
        it too, even where the ``ways`` bound has since dropped it from a hot leading
        block (a shared system prompt is sent to many workers). Where ``worker_blocks``
        models the workers' own caches, a worker counts only up to its first block that
        it must have evicted: an engine reuses a cached prefix only from the start.
        """
        out: dict[str, int] = {}
        per_worker = self._per_worker if self.worker_blocks is not None else None
        for i, h in enumerate(key):
            holders = self._table.get(h)
            if not holders:
                break
            for w in holders:
                have = out.get(w, 0)
                if per_worker is not None and have != i:
                    lru = per_worker.get(w)
                    if lru is None or any(k not in lru for k in key[have:i]):
                        continue
                out[w] = i + 1
        return out


@dataclass(frozen=True, slots=True)
class GenerativeRequest:
    """What the router knows of one generative request."""

    model: str
    prompt_chars: int
    max_tokens: int
    key: tuple[bytes, ...] = ()  # :func:`prefix_key` of the prompt


@dataclass(frozen=True, slots=True)
class WorkerCandidate:
    """One worker that serves the model, with the RTT to its region (plain data)."""

    region: str
    worker_id: str
    rtt_ms: float
    running: int = 0
    waiting: int = 0
    outstanding: int = 0  # sent by this router since the worker's last report
    kv_blocks_free: int = 0
    kv_blocks_used: int = 0

    @property
    def load(self) -> int:
        return self.running + self.waiting + self.outstanding


@dataclass(frozen=True, slots=True)
class GenerativeCosts:
    """The figures the cost model needs (per worker; defaults suit a small CPU model).

    ``max_seqs``: sequences one worker decodes at once. ``prefill_tokens_per_s``: its
    prompt throughput. ``tpot_ms``: time per output token alone, growing by
    ``tpot_load_factor`` at a full batch. ``mean_output_tokens``: to estimate when a slot
    frees; with ``mean_prompt_tokens``, the prefill backlog of the sequences ahead.
    ``epsilon``/``load_slack``: the bounded-load cap on cache affinity. ``max_prefill_busy``:
    the most the prefill a request adds is stretched by the queue behind it (``1 / (1 - x)``).
    """

    block_chars: int = DEFAULT_BLOCK_CHARS
    chars_per_token: float = 4.0
    max_seqs: int = 16
    prefill_tokens_per_s: float = 2000.0
    tpot_ms: float = 20.0
    tpot_load_factor: float = 1.0
    mean_output_tokens: float = 64.0
    mean_prompt_tokens: float = 512.0
    epsilon: float = 0.25
    load_slack: float = 2.0
    max_prefill_busy: float = 0.9
    _share: float = field(init=False, repr=False, compare=False, default=0.0)
    _saturated: float = field(init=False, repr=False, compare=False, default=1.0)

    def __post_init__(self) -> None:
        prefill = 1000.0 * self.mean_prompt_tokens / self.prefill_tokens_per_s
        decode = self.mean_output_tokens * self.tpot_ms
        share = prefill / (prefill + decode) if prefill + decode > 0 else 0.0
        object.__setattr__(self, "_share", share)
        # Little's law: a worker whose prefill never idles takes one sequence per mean
        # prefill, and each stays for it and its decode at a full batch's TPOT
        full = self.mean_output_tokens * self.tpot_at(self.max_seqs)
        saturated = (prefill + full) / prefill if prefill > 0 else 1.0
        object.__setattr__(self, "_saturated", max(1.0, saturated))

    def prefill_share(self) -> float:
        """The share of a mean sequence's lifetime at a worker spent prefilling."""
        return self._share

    def saturated_load(self) -> float:
        """The sequences a worker holds when its prefill runs all the time."""
        return self._saturated

    def prefill_busy(self, load: int) -> float:
        """The share of the time the worker's prefill is busy, from its load against
        :meth:`saturated_load`, at most ``max_prefill_busy``."""
        return min(self.max_prefill_busy, load / self._saturated)

    def added_prefill_ms(self, uncached_chars: int, load: int) -> float:
        """What prefilling ``uncached_chars`` at a worker with ``load`` sequences costs:
        its own prefill, plus the delay it adds to the prefills queued behind it there
        (a queue busy ``u`` of the time stretches added work by ``1 / (1 - u)``). This is
        where a cached prefix pays: the tokens it saves are saved for everyone after it."""
        return self.prefill_ms(uncached_chars) / (1.0 - self.prefill_busy(load))

    def tokens(self, chars: int) -> float:
        return chars / self.chars_per_token

    def tpot_at(self, load: int) -> float:
        share = min(1.0, load / self.max_seqs)
        return self.tpot_ms * (1.0 + self.tpot_load_factor * share)

    def slot_wait_ms(self, load: int) -> float:
        """Until a sequence slot frees: each of ``ahead`` queued sequences waits for one of
        ``max_seqs`` running ones to finish (a mean output length at the current TPOT)."""
        ahead = load + 1 - self.max_seqs
        if ahead <= 0:
            return 0.0
        seq_ms = self.mean_output_tokens * self.tpot_at(load)
        return ahead * seq_ms / self.max_seqs

    def backlog_ms(self, load: int) -> float:
        """Prefill work of the sequences already at the worker that still delays a new
        one's first token: each is prefilling with the probability that a sequence's
        lifetime is prefill, and then has half a mean prompt left on average."""
        prefill = 1000.0 * self.mean_prompt_tokens / self.prefill_tokens_per_s
        return min(load, self.max_seqs) * self.prefill_share() * prefill / 2

    def prefill_ms(self, uncached_chars: int) -> float:
        return 1000.0 * self.tokens(uncached_chars) / self.prefill_tokens_per_s


@dataclass(frozen=True, slots=True)
class WorkerChoice:
    region: str
    worker_id: str
    cost_ms: float
    cached_blocks: int  # blocks of the prompt credited as cached at this worker
    load_capped: bool  # it had the prefix but was over the load bound


class KvAwarePolicy:
    """KV-cache-aware pricing across regions and workers with bounded-load affinity.

    ``choose`` prices every candidate and returns them best first; ``record`` tells the
    affinity table where the request went. ``cached`` (worker -> blocks) overrides the
    learned table: an oracle that reads each worker's cache passes it in.
    """

    name = "kv-aware"

    def __init__(
        self, costs: GenerativeCosts | None = None, affinity: PrefixAffinity | None = None
    ) -> None:
        self.costs = costs or GenerativeCosts()
        self.affinity = affinity or PrefixAffinity()
        self._per_load: dict[int, tuple[float, float, float]] = {}

    def load_cap(
        self, candidates: Sequence[WorkerCandidate], mean_load: float | None = None
    ) -> float:
        """The load at and above which a worker gets no cache credit. ``mean_load``: the
        mean over every worker that could take the request (this one counted), where the
        caller prices only some of them; else the candidates' mean."""
        if mean_load is None:
            mean_load = (sum(c.load for c in candidates) + 1) / max(1, len(candidates))
        return (1.0 + self.costs.epsilon) * mean_load + self.costs.load_slack

    def price(self, request: GenerativeRequest, c: WorkerCandidate, cached_blocks: int) -> float:
        """``rtt + slot_wait(load) + backlog(load) + added_prefill(uncached, load)
        + max_tokens x tpot_at(load + 1)`` (the terms that depend on the load alone are
        kept per load: they are the same for every request)."""
        waits, per_char, tpot = self._terms(c.load)
        uncached = max(0, request.prompt_chars - cached_blocks * self.costs.block_chars)
        return c.rtt_ms + waits + uncached * per_char + request.max_tokens * tpot

    def first_token_ms(
        self, request: GenerativeRequest, c: WorkerCandidate, cached_blocks: int
    ) -> float:
        """The part of :meth:`price` until the first token reaches the client: ``rtt +
        slot_wait(load) + backlog(load) + added_prefill(uncached, load)`` (what a
        time-to-first-token deadline is checked against)."""
        waits, per_char, _ = self._terms(c.load)
        uncached = max(0, request.prompt_chars - cached_blocks * self.costs.block_chars)
        return c.rtt_ms + waits + uncached * per_char

    def _terms(self, load: int) -> tuple[float, float, float]:
        """Per load: (slot wait + backlog, added prefill per uncached character, TPOT)."""
        terms = self._per_load.get(load)
        if terms is None:
            costs = self.costs
            terms = self._per_load[load] = (
                costs.slot_wait_ms(load) + costs.backlog_ms(load),
                costs.added_prefill_ms(1000, load) / 1000,
                costs.tpot_at(load + 1),
            )
        return terms

    def rank(
        self,
        request: GenerativeRequest,
        candidates: Sequence[WorkerCandidate],
        cached: Mapping[str, int] | None = None,
        mean_load: float | None = None,
    ) -> list[WorkerChoice]:
        if not candidates:
            return []
        matched = self.affinity.matched_blocks(request.key) if cached is None else cached
        cap = self.load_cap(candidates, mean_load)
        out: list[WorkerChoice] = []
        for c in candidates:
            blocks = matched.get(c.worker_id, 0)
            capped = blocks > 0 and c.load >= cap
            credit = 0 if capped else blocks
            out.append(
                WorkerChoice(c.region, c.worker_id, self.price(request, c, credit), credit, capped)
            )
        out.sort(key=lambda w: (w.cost_ms, -w.cached_blocks))
        return out

    def choose(
        self,
        request: GenerativeRequest,
        candidates: Sequence[WorkerCandidate],
        cached: Mapping[str, int] | None = None,
        mean_load: float | None = None,
    ) -> WorkerChoice | None:
        ranked = self.rank(request, candidates, cached, mean_load)
        return ranked[0] if ranked else None

    def record(self, request: GenerativeRequest, worker_id: str) -> None:
        self.affinity.record(request.key, worker_id)


class LeastLoadedGenerative:
    """Baseline: the worker with the fewest sequences (ties: lower RTT); no cache notion."""

    name = "least-loaded"

    def choose(
        self, request: GenerativeRequest, candidates: Sequence[WorkerCandidate]
    ) -> WorkerCandidate | None:
        return min(candidates, key=lambda c: (c.load, c.rtt_ms), default=None)


class RoundRobinGenerative:
    """Baseline: workers in turn."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next = 0

    def choose(
        self, request: GenerativeRequest, candidates: Sequence[WorkerCandidate]
    ) -> WorkerCandidate | None:
        if not candidates:
            return None
        pick = candidates[self._next % len(candidates)]
        self._next += 1
        return pick
