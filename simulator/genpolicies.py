"""The policies of the generative simulation, each driving the router's own objects.

- ``nearest`` and ``waterfall`` choose a region with :class:`~router.policies.NearestPolicy`
  / :class:`~router.policies.WaterfallPolicy` (``choose_batch``, as in the one-shot
  simulator), then a worker there with the router's power of two choices.
- ``least-loaded``: :class:`~router.policies.LeastLoadedGenerative` over the workers of
  the nearest regions.
- ``meridian``: :class:`~router.policies.KvAwarePolicy`, with its learned prefix
  affinity (``record`` after every choice), over the same workers, and the router's
  admission (:mod:`simulator.genadmission`), as the product ships;
  ``meridian-no-admission``: the same routing placing every request.
- ``oracle``: the same pricing told each priced worker's true cache contents (``cached``)
  and true load, instead of what a router can learn, with the same admission.

The baselines place every request (routing policies alone, as in the one-shot overload
comparison).

Loads are what the router sees: each worker's load in the last snapshot plus the
requests sent to it since (the oracle: the true load now). Worker-level policies price,
per candidate region, its least-loaded worker and the workers there that hold the
prompt's prefix, less any that another of them beats on both counts (at most as loaded,
at least as much of the prefix held): those cannot be cheaper, so this keeps the
per-request work small. The bounded-load cap is taken over all the regions' workers
(``mean_load``), so leaving the others out changes no choice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from router.policies import (
    GenerativeCosts,
    GenerativeRequest,
    KvAwarePolicy,
    LeastLoadedGenerative,
    NearestPolicy,
    PrefixAffinity,
    RoutingPolicy,
    WaterfallPolicy,
    WorkerCandidate,
)
from router.policies.generative import WorkerChoice
from simulator.genadmission import GenAdmission
from simulator.genengine import (
    NO_WORKER,
    REFUSED_FULL,
    REFUSED_LATE,
    GenSimulation,
    Router,
    ServiceModel,
)

__all__ = ["GEN_POLICIES", "make_router"]

IntArray = npt.NDArray[np.int64]

GEN_POLICIES = (
    "nearest",
    "waterfall",
    "least-loaded",
    "meridian",
    "meridian-no-admission",
    "oracle",
)
CHARS_PER_TOKEN = 4
MANY_HOLDERS = 32  # the oracle stops listing a block's holders beyond this many
INF = float("inf")


def _key(chain: list[int]) -> tuple[bytes, ...]:
    return tuple(h.to_bytes(8, "little") for h in chain)


class RegionRouter(Router):
    region_level = True

    def __init__(self, policy: RoutingPolicy) -> None:
        self.policy = policy
        self.name = policy.name

    def choose_regions(self, sim: GenSimulation, client: IntArray, exclude: IntArray) -> IntArray:
        assert sim.table is not None
        rtt = sim.rtt_city[client]
        return self.policy.choose_batch(sim.table, sim.stats, rtt, sim.now / 1000.0, exclude)


class WorkerRouter(Router):
    """Shared candidate selection for the policies that pick workers."""

    true_state = False

    def _pool(
        self, sim: GenSimulation, client: int, exclude: int, chain: list[int], now: float
    ) -> tuple[list[int], list[float], dict[int, int], float]:
        """The workers worth pricing, their loads, the prefix blocks each holds and the
        mean load over every worker of the candidate regions (this request counted).

        Per region, a worker is priced only if no other there is both at most as loaded
        and holds at least as many of the prompt's blocks (the price cannot be lower:
        it grows with the load and falls with the blocks held, and the load bound is
        taken over all the regions' workers). The region's least-loaded worker is
        always among them."""
        regions = sim.candidates(client, exclude)
        held = self.holding(sim, chain, regions)
        seen = sim.seen
        load_of: Callable[[int], float]
        if self.true_state:  # the oracle prices them at their true loads

            def load_of(w: int) -> float:
                return float(sim.load(w, now))
        else:
            load_of = seen.__getitem__
        pool: list[int] = []
        loads: list[float] = []
        total = 1.0
        count = 0
        by_region: dict[int, list[int]] = {}
        regs = sim.w_region
        for w in held:
            by_region.setdefault(regs[w], []).append(w)
        for r in regions:
            total += sim.seen_sum[r]
            count += sim.region_size[r]
            best = sim.least_seen(r)
            hs = by_region.get(r)
            if not hs:
                pool.append(best)
                loads.append(load_of(best))
                continue
            if best not in held:
                depth = self.depth(sim, best, chain)
                if depth:
                    held[best] = depth
                hs.append(best)
            ranked = sorted((-held.get(w, 0), load_of(w), w) for w in hs)
            floor = INF
            for _, x, w in ranked:
                if x < floor:
                    pool.append(w)
                    loads.append(x)
                    floor = x
        return pool, loads, held, total / max(1, count)

    def holding(self, sim: GenSimulation, chain: list[int], regions: list[int]) -> dict[int, int]:
        """Workers of ``regions`` known to hold a prefix of ``chain``: how many blocks."""
        return {}

    def depth(self, sim: GenSimulation, w: int, chain: list[int]) -> int:
        """Blocks of ``chain`` worker ``w`` holds, where ``holding`` did not list it."""
        return 0


class LeastLoadedRouter(WorkerRouter):
    name = "least-loaded"

    def __init__(self) -> None:
        self.policy = LeastLoadedGenerative()

    def choose(self, sim: GenSimulation, req: tuple[int, int, int, list[int], int]) -> int:
        client, prompt, output, chain, exclude = req
        pool, loads, _, _ = self._pool(sim, client, exclude, chain, sim.now)
        rtt = sim.rtt_rows[client]
        names = sim.w_name
        ids = sim.w_str
        regs = sim.w_region
        cands = [
            WorkerCandidate(names[w], ids[w], rtt[regs[w]], int(x))
            for w, x in zip(pool, loads, strict=True)
        ]
        pick = self.policy.choose(
            GenerativeRequest("chat", prompt * CHARS_PER_TOKEN, output), cands
        )
        return -1 if pick is None else int(pick.worker_id)


def costs_for(service: ServiceModel, mean_prompt: float, mean_output: float) -> GenerativeCosts:
    """The policy's cost model with the engines' figures."""
    return GenerativeCosts(
        block_chars=service.block_tokens * CHARS_PER_TOKEN,
        chars_per_token=CHARS_PER_TOKEN,
        max_seqs=service.max_seqs,
        prefill_tokens_per_s=1000.0 / service.prefill_ms(1.0),
        tpot_ms=service.step_ms(1),
        tpot_load_factor=(service.step_ms(service.max_seqs) / service.step_ms(1)) - 1.0,
        mean_output_tokens=mean_output,
        mean_prompt_tokens=mean_prompt,
    )


class KvRouter(WorkerRouter):
    """Meridian's KV-aware policy; ``oracle=True``: told the truth about caches and loads;
    ``admission``: refuse what the fleet cannot serve in time (None: place everything)."""

    def __init__(
        self, costs: GenerativeCosts, oracle: bool = False, admission: GenAdmission | None = None
    ) -> None:
        self.policy = KvAwarePolicy(costs, PrefixAffinity(capacity=2_000_000))
        self.oracle = oracle
        self.true_state = oracle
        self.admission = admission
        self.name = "oracle" if oracle else "meridian"
        if admission is None:
            self.name += "-no-admission"
        self._key: tuple[bytes, ...] = ()
        self._matched: dict[str, int] = {}

    def holding(self, sim: GenSimulation, chain: list[int], regions: list[int]) -> dict[int, int]:
        if not chain:
            return {}
        w_region = sim.w_region
        if self.oracle:
            return self._true_holders(sim, chain, set(regions))
        # what ``rank`` would look up again: handed to it as ``cached`` (the same table)
        matched = self._matched = self.policy.affinity.matched_blocks(self._key)
        return {w: b for wid, b in matched.items() if w_region[w := int(wid)] in regions}

    def _true_holders(
        self, sim: GenSimulation, chain: list[int], regions: set[int]
    ) -> dict[int, int]:
        """The engines of ``regions`` whose caches hold the longest prefixes of ``chain``,
        deepest block first, up to the first block that more than ``MANY_HOLDERS`` engines
        hold (the least-loaded engine of each region is priced with its own cache too)."""
        holders = sim.holders
        j = len(chain) - 1
        while j >= 0 and chain[j] not in holders:
            j -= 1
        out: dict[int, int] = {}
        looked: set[int] = set()
        w_region = sim.w_region
        for i in range(j, -1, -1):
            s = holders.get(chain[i])
            if not s:
                continue
            if len(s) > MANY_HOLDERS:
                break
            for w in s - looked:
                looked.add(w)
                if w_region[w] in regions and (d := sim.matched(w, chain)):
                    out[w] = d
        return out

    def depth(self, sim: GenSimulation, w: int, chain: list[int]) -> int:
        return sim.matched(w, chain) if self.oracle else 0

    def choose(self, sim: GenSimulation, req: tuple[int, int, int, list[int], int]) -> int:
        client, prompt, output, chain, exclude = req
        admission = self.admission
        if admission is not None and admission.full(sim.held, sim.slots_total):
            return REFUSED_FULL
        self._key = _key(chain)
        pool, loads, held, mean_load = self._pool(sim, client, exclude, chain, sim.now)
        rtt = sim.rtt_rows[client]
        names = sim.w_name
        ids = sim.w_str
        regs = sim.w_region
        cands = [
            WorkerCandidate(names[w], ids[w], rtt[regs[w]], int(x))
            for w, x in zip(pool, loads, strict=True)
        ]
        request = GenerativeRequest("chat", prompt * CHARS_PER_TOKEN, output, self._key)
        cached = {ids[w]: held[w] for w in pool if w in held} if self.oracle else self._matched
        ranked = self.policy.rank(request, cands, cached, mean_load)
        if not ranked:
            return NO_WORKER
        if admission is None:
            return int(ranked[0].worker_id)
        return self._in_time(request, cands, ranked, sim.budget_ms, admission)

    def _in_time(
        self,
        request: GenerativeRequest,
        cands: list[WorkerCandidate],
        ranked: list[WorkerChoice],
        budget_ms: float,
        admission: GenAdmission,
    ) -> int:
        """The cheapest worker expected to give the first token within ``budget_ms``;
        ``REFUSED_LATE`` when none is."""
        by_id = {c.worker_id: c for c in cands}
        first_token = self.policy.first_token_ms
        for choice in ranked:
            expected = first_token(request, by_id[choice.worker_id], choice.cached_blocks)
            if not admission.late(expected, budget_ms):
                return int(choice.worker_id)
        return REFUSED_LATE

    def placed(self, sim: GenSimulation, worker: int, chain: list[int], prompt: int) -> None:
        if not self.oracle:
            self.policy.record(
                GenerativeRequest("chat", prompt * CHARS_PER_TOKEN, 0, self._key), str(worker)
            )


def make_router(name: str, sim_costs: GenerativeCosts) -> Router:
    if name == "nearest":
        return RegionRouter(NearestPolicy())
    if name == "waterfall":
        return RegionRouter(WaterfallPolicy())
    if name == "least-loaded":
        return LeastLoadedRouter()
    if name == "meridian":
        return KvRouter(sim_costs, admission=GenAdmission())
    if name == "meridian-no-admission":
        return KvRouter(sim_costs)
    if name == "oracle":
        return KvRouter(sim_costs, oracle=True, admission=GenAdmission())
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(GEN_POLICIES)}")
