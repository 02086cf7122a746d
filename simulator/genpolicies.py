"""The policies of the generative simulation, each driving the router's own objects.

- ``nearest`` and ``waterfall`` choose a region with :class:`~router.policies.NearestPolicy`
  / :class:`~router.policies.WaterfallPolicy` (``choose_batch``, as in the one-shot
  simulator), then a worker there with the router's power of two choices.
- ``least-loaded``: :class:`~router.policies.LeastLoadedGenerative` over the workers of
  the nearest regions.
- ``meridian``: :class:`~router.policies.KvAwarePolicy`, with its learned prefix
  affinity (``record`` after every choice), over the same workers.
- ``oracle``: the same pricing told each priced worker's true cache contents (``cached``)
  and true load, instead of what a router can learn.

Loads are what the router sees: each worker's load in the last snapshot plus the
requests sent to it since (the oracle: the true load now). Worker-level policies price
the candidate regions' least-loaded worker(s) plus every worker there that holds the
prompt's prefix: a worker neither less loaded nor holding more of the prefix than one of
those cannot be cheaper, so this keeps the per-request work small.
"""

from __future__ import annotations

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
from simulator.genengine import GenSimulation, Router, ServiceModel

__all__ = ["GEN_POLICIES", "make_router"]

IntArray = npt.NDArray[np.int64]

GEN_POLICIES = ("nearest", "waterfall", "least-loaded", "meridian", "oracle")
CHARS_PER_TOKEN = 4


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
    ) -> tuple[list[int], list[float], dict[int, int]]:
        regions = sim.candidates(client, exclude)
        held = self.holding(sim, chain, regions)
        pool: list[int] = []
        loads: list[float] = []
        load = sim.seen
        for r in regions:
            best = sim.least_seen(r)
            if best not in held:
                pool.append(best)
                loads.append(load[best])
        for w in held:
            pool.append(w)
            loads.append(load[w])
        if self.true_state:  # the oracle prices them at their true loads
            true_load = sim.load
            loads = [float(true_load(w, now)) for w in pool]
        return pool, loads, held

    def holding(self, sim: GenSimulation, chain: list[int], regions: list[int]) -> dict[int, int]:
        return {}


class LeastLoadedRouter(WorkerRouter):
    name = "least-loaded"

    def __init__(self) -> None:
        self.policy = LeastLoadedGenerative()

    def choose(self, sim: GenSimulation, req: tuple[int, int, int, list[int], int]) -> int:
        client, prompt, output, chain, exclude = req
        pool, loads, _ = self._pool(sim, client, exclude, chain, sim.now)
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
    """Meridian's KV-aware policy; ``oracle=True``: told the truth about caches and loads."""

    def __init__(self, costs: GenerativeCosts, oracle: bool = False) -> None:
        self.policy = KvAwarePolicy(costs, PrefixAffinity(capacity=2_000_000))
        self.oracle = oracle
        self.true_state = oracle
        self.name = "oracle" if oracle else "meridian"
        self._key: tuple[bytes, ...] = ()
        self._matched: dict[str, int] = {}

    def holding(self, sim: GenSimulation, chain: list[int], regions: list[int]) -> dict[int, int]:
        if not chain:
            return {}
        if self.oracle:
            out: dict[int, int] = {}
            alive: set[int] | None = None
            for i, h in enumerate(chain):
                s = sim.holders.get(h)
                if not s:
                    break
                alive = set(s) if alive is None else alive & s
                if not alive:
                    break
                for w in alive:
                    out[w] = i + 1
            return {w: b for w, b in out.items() if sim.w_region[w] in regions}
        # what ``rank`` would look up again: handed to it as ``cached`` (the same table)
        matched = self._matched = self.policy.affinity.matched_blocks(self._key)
        return {w: b for wid, b in matched.items() if sim.w_region[w := int(wid)] in regions}

    def choose(self, sim: GenSimulation, req: tuple[int, int, int, list[int], int]) -> int:
        client, prompt, output, chain, exclude = req
        self._key = _key(chain)
        pool, loads, held = self._pool(sim, client, exclude, chain, sim.now)
        rtt = sim.rtt_rows[client]
        names = sim.w_name
        ids = sim.w_str
        regs = sim.w_region
        cands = [
            WorkerCandidate(names[w], ids[w], rtt[regs[w]], int(x))
            for w, x in zip(pool, loads, strict=True)
        ]
        request = GenerativeRequest("chat", prompt * CHARS_PER_TOKEN, output, self._key)
        cached = {ids[w]: b for w, b in held.items()} if self.oracle else self._matched
        pick = self.policy.choose(request, cands, cached)
        if pick is None:
            return -1
        return int(pick.worker_id)

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
        return KvRouter(sim_costs)
    if name == "oracle":
        return KvRouter(sim_costs, oracle=True)
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(GEN_POLICIES)}")
