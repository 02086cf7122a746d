"""The standard scenarios and the side-by-side runner.

The fleet is the 32 AWS regions. Each region's GPU count is provisioned for the
traffic that would reach it under nearest-region routing at the target rate, at
60% utilisation (at least 8 GPUs): the fleet an operator would size from demand.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from router.latency import FITTED, great_circle_km_array
from router.policies import (
    MeridianPolicy,
    NearestPolicy,
    OraclePolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    WaterfallPolicy,
)
from simulator.data import Places, Regions, Trace, load_places, load_regions, load_trace
from simulator.engine import FleetEvent, FleetSpec, SimConfig, Simulation
from simulator.metrics import PolicyResult
from simulator.workload import Burst, CostModel, Workload

__all__ = [
    "POLICIES",
    "SCENARIOS",
    "Scenario",
    "World",
    "build_fleet",
    "make_policy",
    "run_scenario",
]

POLICIES = ("nearest", "waterfall", "round-robin", "meridian", "oracle")
SCENARIOS = ("steady", "burst", "region-failure", "follow-the-sun")

FRANKFURT = (50.11, 8.68)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    rate_rps: float
    duration_s: float
    bursts: tuple[Burst, ...] = ()
    events: tuple[FleetEvent, ...] = ()
    follow_the_sun: bool = False


@dataclass(frozen=True, slots=True)
class World:
    """The data every scenario runs on, loaded once."""

    regions: Regions
    places: Places
    trace: Trace

    @classmethod
    def load(cls, data: Path | None = None, trace: str = "conv") -> World:
        """From the full files in ``data``, or from the shipped extracts when ``None``."""
        return cls(load_regions(data), load_places(data), load_trace(data, trace))


def standard(name: str, rate_rps: float, duration_s: float) -> Scenario:
    d = duration_s
    if name == "steady":
        return Scenario(name, "trace-shaped load, no incidents", rate_rps, d)
    if name == "burst":
        burst = Burst(*FRANKFURT, radius_km=1500.0, factor=4.0, start_s=0.3 * d, end_s=0.7 * d)
        return Scenario(
            name,
            "clients within 1,500 km of Frankfurt send 4x traffic for 40% of the run",
            rate_rps,
            d,
            bursts=(burst,),
        )
    if name == "region-failure":
        return Scenario(
            name,
            "us-east-1 fails at 30% of the run and returns at 70%;"
            " eu-west-1 loses half its GPUs at 50%",
            rate_rps,
            d,
            events=(
                FleetEvent("fail", "us-east-1", at_s=0.3 * d, until_s=0.7 * d),
                FleetEvent("capacity", "eu-west-1", at_s=0.5 * d, gpus=-1),
            ),
        )
    if name == "follow-the-sun":
        return Scenario(
            name,
            "one day of local-time traffic (peak 15:00, trough 03:00) compressed into the run",
            rate_rps,
            d,
            follow_the_sun=True,
        )
    raise ValueError(f"unknown scenario {name!r}: choose one of {', '.join(SCENARIOS)}")


def build_fleet(
    world: World,
    rate_rps: float,
    mean_service_ms: float,
    events: Sequence[FleetEvent] = (),
    utilization: float = 0.6,
    min_gpus: int = 8,
) -> FleetSpec:
    r = world.regions
    km = great_circle_km_array(
        world.places.lat[:, None], world.places.lon[:, None], r.lat[None, :], r.lon[None, :]
    )
    nearest = np.argmin(FITTED.rtt_ms_array(km), axis=1)
    share = np.bincount(nearest, weights=world.places.population, minlength=len(r.names))
    share = share / share.sum()
    busy = share * rate_rps * mean_service_ms / 1000.0
    gpus = np.maximum(np.ceil(busy / utilization), min_gpus).astype(np.int64)
    resolved = []
    for ev in events:
        if ev.kind == "capacity" and ev.gpus < 0:  # -1: half of the region's GPUs
            ev = replace(ev, gpus=max(1, int(gpus[r.names.index(ev.region)]) // 2))
        resolved.append(ev)
    return FleetSpec(r.names, r.lat, r.lon, gpus, tuple(resolved))


def make_policy(
    name: str, truth: Callable[[], np.ndarray], mean_service_ms: float
) -> RoutingPolicy:
    if name == "nearest":
        return NearestPolicy()
    if name == "waterfall":
        return WaterfallPolicy()
    if name == "round-robin":
        return RoundRobinPolicy()
    if name == "meridian":
        return MeridianPolicy(default_service_ms=mean_service_ms)
    if name == "oracle":
        return OraclePolicy(truth=truth)
    raise ValueError(f"unknown policy {name!r}: choose from {', '.join(POLICIES)}")


class _Truth:
    """The oracle's perfect knowledge: the simulation's own earliest server-free times."""

    sim: Simulation | None = None

    def __call__(self) -> np.ndarray:
        assert self.sim is not None
        return self.sim.free0


def run_scenario(
    world: World,
    scenario: Scenario,
    policies: Sequence[str] = POLICIES,
    *,
    seed: int = 1,
    config: SimConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, PolicyResult]:
    """Every policy on the same arrivals (same seed), the same fleet, the same events."""
    cfg = replace(config or SimConfig(), duration_s=scenario.duration_s)
    cost = CostModel()
    mean_service = float(
        cost.service_ms(world.trace.input_tokens, world.trace.output_tokens).mean()
    )
    fleet = build_fleet(world, scenario.rate_rps, mean_service, scenario.events)
    results: dict[str, PolicyResult] = {}
    for name in policies:
        workload = Workload(
            world.places,
            world.trace,
            scenario.rate_rps,
            cost=cost,
            bursts=scenario.bursts,
            follow_the_sun_day_s=scenario.duration_s if scenario.follow_the_sun else 0.0,
            seed=seed,
        )
        truth = _Truth()
        policy = make_policy(name, truth, mean_service)
        sim = Simulation(policy, fleet, workload, cfg)
        truth.sim = sim
        results[name] = sim.run()
        if progress is not None:
            r = results[name]
            progress(
                f"{scenario.name}/{name}: {r.requests:,} requests in {r.wall_s:.1f} s wall"
                f" ({r.requests / max(r.wall_s, 1e-9):,.0f}/s)"
            )
    return results
