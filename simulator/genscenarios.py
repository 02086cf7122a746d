"""The generative scenarios and the side-by-side runner.

The fleet is the 32 AWS regions. Each region gets engines for the chat traffic that
would reach it under nearest-region routing at the target rate, at ``utilization`` of
an engine's capacity with ``provision_hit`` of the prompt tokens found in its prefix
cache (what cache-aware routing achieves on this workload), at least ``min_workers``:
the fleet an operator sizes for prefix caching that works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from router.latency import FITTED, great_circle_km_array
from simulator.data import Places, Regions, Trace, load_places, load_regions, load_trace
from simulator.genengine import GenConfig, GenFleet, GenSimulation
from simulator.genmetrics import GenResult
from simulator.genpolicies import GEN_POLICIES, KvRouter, costs_for, make_router
from simulator.genworkload import GenWorkload, Prefixes, azure_mix, load_prefixes
from simulator.scenarios import FRANKFURT
from simulator.workload import Burst

__all__ = ["GEN_SCENARIOS", "GenScenario", "GenWorld", "build_gen_fleet", "gen_standard", "run_gen"]

GEN_SCENARIOS = ("gen-steady", "gen-burst", "gen-follow-the-sun", "gen-region-failure")


@dataclass(frozen=True, slots=True)
class GenScenario:
    name: str
    description: str
    rate_rps: float
    duration_s: float
    bursts: tuple[Burst, ...] = ()
    fail_largest_at: float = -1.0  # fraction of the run; < 0: no failure
    follow_the_sun: bool = False


@dataclass(frozen=True, slots=True)
class GenWorld:
    regions: Regions
    places: Places
    trace: Trace  # Azure code + conversation
    prefixes: Prefixes

    @classmethod
    def load(cls, data: Path | None = None) -> GenWorld:
        trace = azure_mix(load_trace(data, "code"), load_trace(data, "conv"))
        return cls(load_regions(data), load_places(data), trace, load_prefixes(data))


def gen_standard(name: str, rate_rps: float, duration_s: float) -> GenScenario:
    d = duration_s
    if name == "gen-steady":
        return GenScenario(name, "trace-shaped chat load, no incidents", rate_rps, d)
    if name == "gen-burst":
        burst = Burst(*FRANKFURT, radius_km=1500.0, factor=4.0, start_s=0.3 * d, end_s=0.7 * d)
        return GenScenario(
            name,
            "clients within 1,500 km of Frankfurt send 4x chat traffic for 40% of the run",
            rate_rps,
            d,
            bursts=(burst,),
        )
    if name == "gen-follow-the-sun":
        return GenScenario(
            name,
            "one day of local-time chat traffic (peak 15:00, trough 03:00) in the run",
            rate_rps,
            d,
            follow_the_sun=True,
        )
    if name == "gen-region-failure":
        return GenScenario(
            name,
            "the largest region fails at half time and stays down",
            rate_rps,
            d,
            fail_largest_at=0.5,
        )
    raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(GEN_SCENARIOS)}")


def build_gen_fleet(
    world: GenWorld,
    rate_rps: float,
    config: GenConfig,
    *,
    utilization: float = 0.8,
    provision_hit: float = 0.15,
    min_workers: int = 2,
) -> GenFleet:
    r = world.regions
    p = world.places
    km = great_circle_km_array(p.lat[:, None], p.lon[:, None], r.lat[None, :], r.lon[None, :])
    nearest = np.argmin(FITTED.rtt_ms_array(km), axis=1)
    share = np.bincount(nearest, weights=p.population, minlength=len(r.names))
    share = share / share.sum()
    prompt = float(np.clip(world.trace.input_tokens, 1, 8192).mean())
    output = float(np.maximum(world.trace.output_tokens, 1).mean())
    per_worker = config.service.capacity_rps(prompt, output, provision_hit)
    workers = np.maximum(
        np.ceil(share * rate_rps / (per_worker * utilization)), min_workers
    ).astype(np.int64)
    return GenFleet(r.names, r.lat, r.lon, workers)


def run_gen(
    world: GenWorld,
    scenario: GenScenario,
    policies: Sequence[str] = GEN_POLICIES,
    *,
    seed: int = 1,
    config: GenConfig | None = None,
    progress: Callable[[str], None] | None = None,
    tenants: int | None = None,
) -> dict[str, GenResult]:
    """Every policy on the same arrivals (same seed), fleet and failure. ``tenants``
    (default: one per 100 requests/s) sets how fast each replays the Mooncake trace."""
    cfg = replace(config or GenConfig(), duration_s=scenario.duration_s)
    fleet = build_gen_fleet(world, scenario.rate_rps, cfg)
    if scenario.fail_largest_at >= 0:
        largest = fleet.names[int(np.argmax(fleet.workers))]
        fleet = replace(fleet, fail=((largest, scenario.fail_largest_at * scenario.duration_s),))
    results: dict[str, GenResult] = {}
    for name in policies:
        workload = GenWorkload(
            world.places,
            world.trace,
            world.prefixes,
            scenario.rate_rps,
            bursts=scenario.bursts,
            follow_the_sun_day_s=scenario.duration_s if scenario.follow_the_sun else 0.0,
            tenants=tenants or max(8, int(scenario.rate_rps / 100.0)),
            block_tokens=cfg.service.block_tokens,
            seed=seed,
        )
        router = make_router(
            name, costs_for(cfg.service, workload.mean_prompt, workload.mean_output)
        )
        sim = GenSimulation(router, fleet, workload, cfg)
        sim.track_holders = isinstance(router, KvRouter) and router.oracle
        results[name] = res = sim.run()
        if progress is not None:
            progress(
                f"{scenario.name}/{name}: {res.requests:,} requests in {res.wall_s:.1f} s wall,"
                f" {res.cpu_s:.1f} s CPU ({res.requests / max(res.wall_s, 1e-9):,.0f}/s)"
            )
    return results
