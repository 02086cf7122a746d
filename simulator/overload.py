"""Overload and staleness: admission control, goodput, and many routers on stale snapshots.

``overload``: the fleet is sized for ``nominal_rps`` as in the standard scenarios, and
then offered 0.8x, 1.5x and 2.5x of what its GPUs can serve (its capacity: GPUs x
1000 / mean service ms; the offered figure is the run's mean, the trace's shape
included). Every request has the same end-to-end deadline and one of two classes
(0 = higher); goodput is requests completed within their deadline per second.
nearest, waterfall and Meridian queue everything; ``meridian+admission`` refuses at
the router with the router's own ``router.admission.Admission`` (``SIM_ADMISSION``).

``staleness``: N router replicas (each with its own ``RouterStats``, fed only its own
requests) on the same snapshots, published every 0.1, 1 or 5 s, with every second
region reporting 0.5x or 2x its real capacity; the share of requests within the
deadline per policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from router.admission import Admission, AdmissionConfig
from router.policies import MeridianPolicy, NearestPolicy, RoutingPolicy, WaterfallPolicy
from simulator.engine import FleetSpec, SimConfig, Simulation
from simulator.metrics import PolicyResult
from simulator.scenarios import World, build_fleet
from simulator.workload import CostModel, Workload

__all__ = [
    "OVERLOAD_FACTORS",
    "OVERLOAD_POLICIES",
    "SIM_ADMISSION",
    "OverloadSetup",
    "StalenessRow",
    "fleet_capacity_rps",
    "make_router_policy",
    "offered_rate",
    "run_overload",
    "run_staleness",
]

OVERLOAD_FACTORS = (0.8, 1.5, 2.5)
OVERLOAD_POLICIES = ("nearest", "waterfall", "meridian", "meridian+admission")
SPREAD_MS = 20.0  # Meridian's randomised choice: regions within 20 ms of the best
# the routers' admission here: the fleet load is the policy's queue model (requests in the
# regions over their servers), whose queue reads fuller than the router's ``FleetLoad``
SIM_ADMISSION = AdmissionConfig(
    interactive_max_load=3.0,
    batch_max_load=2.5,
    interactive_deadline_share=0.8,
    batch_deadline_share=0.6,
)


@dataclass(frozen=True, slots=True)
class OverloadSetup:
    nominal_rps: float = 5000.0  # the fleet is sized for this (nearest demand, 60% busy)
    duration_s: float = 10.0
    deadline_ms: float = 1000.0
    class_shares: tuple[float, ...] = (0.5, 0.5)
    admission: AdmissionConfig = SIM_ADMISSION
    seed: int = 1


def fleet_capacity_rps(fleet: FleetSpec, mean_service_ms: float) -> float:
    return float(fleet.gpus.sum()) * 1000.0 / mean_service_ms


def offered_rate(world: World, target_rps: float, duration_s: float) -> float:
    """The ``rate_rps`` whose trace-shaped arrivals average ``target_rps`` over the run."""
    w = Workload(world.places, world.trace, 1.0)
    shape = np.mean([w.rate_at(t) for t in np.arange(0.0, duration_s, 0.1)])
    return target_rps / float(shape)


def make_router_policy(name: str, mean_service_ms: float, router: int = 0) -> RoutingPolicy:
    if name == "nearest":
        return NearestPolicy()
    if name == "waterfall":
        return WaterfallPolicy()
    if name in ("meridian", "meridian+admission"):
        return MeridianPolicy(default_service_ms=mean_service_ms, spread_ms=SPREAD_MS, seed=router)
    if name == "meridian-greedy":  # the choice without the randomised spread
        return MeridianPolicy(default_service_ms=mean_service_ms)
    if name == "meridian-naive":  # neither spread, nor share scaling, nor learned capacity
        return MeridianPolicy(default_service_ms=mean_service_ms, herd_safe=False)
    raise ValueError(f"unknown policy {name!r}")


def _run(
    world: World,
    fleet: FleetSpec,
    name: str,
    rate_rps: float,
    cfg: SimConfig,
    setup: OverloadSetup,
) -> PolicyResult:
    if name.endswith("+admission"):
        cfg = replace(cfg, admission=Admission(setup.admission))
    cost = CostModel()
    workload = Workload(world.places, world.trace, rate_rps, cost=cost, seed=setup.seed)
    policies = [
        make_router_policy(name, workload.mean_service_ms, r) for r in range(max(cfg.routers, 1))
    ]
    sim = Simulation(policies, fleet, workload, cfg)
    result = sim.run()
    result.policy = name
    return result


def _base(world: World, setup: OverloadSetup) -> tuple[FleetSpec, float, SimConfig]:
    cost = CostModel()
    trace = world.trace
    mean_service = float(cost.service_ms(trace.input_tokens, trace.output_tokens).mean())
    fleet = build_fleet(world, setup.nominal_rps, mean_service)
    cfg = SimConfig(
        duration_s=setup.duration_s,
        deadline_ms=setup.deadline_ms,
        class_shares=setup.class_shares,
        horizon_s=60.0,
        ring_ms=20.0,
    )
    return fleet, mean_service, cfg


def run_overload(
    world: World,
    setup: OverloadSetup,
    factors: Sequence[float] = OVERLOAD_FACTORS,
    policies: Sequence[str] = OVERLOAD_POLICIES,
    progress: Callable[[str], None] | None = None,
) -> dict[float, dict[str, PolicyResult]]:
    """Per offered factor, per policy: one router, 1 s snapshots, honest reports."""
    fleet, mean_service, cfg = _base(world, setup)
    capacity = fleet_capacity_rps(fleet, mean_service)
    out: dict[float, dict[str, PolicyResult]] = {}
    for f in factors:
        rate = offered_rate(world, f * capacity, setup.duration_s)
        out[f] = {}
        for name in policies:
            r = _run(world, fleet, name, rate, cfg, setup)
            out[f][name] = r
            if progress is not None:
                progress(
                    f"overload {f}x/{name}: {r.requests:,} requests,"
                    f" goodput {r.goodput_rps():,.0f}/s ({r.wall_s:.1f} s wall)"
                )
    return out


@dataclass(frozen=True, slots=True)
class StalenessRow:
    routers: int
    interval_s: float
    report: float  # every second region reports this multiple of its capacity
    factor: float  # offered load / fleet capacity
    results: dict[str, PolicyResult]


def run_staleness(
    world: World,
    setup: OverloadSetup,
    routers: Sequence[int] = (1, 4, 16),
    intervals: Sequence[float] = (0.1, 1.0, 5.0),
    reports: Sequence[float] = (1.0, 0.5, 2.0),
    factor: float = 1.0,
    policies: Sequence[str] = ("nearest", "meridian"),
    progress: Callable[[str], None] | None = None,
    misreport_interval_s: float = 1.0,
) -> list[StalenessRow]:
    """Every (routers, interval) with honest reports, and the misreported capacities
    with each router count at ``misreport_interval_s`` snapshots. Nearest is load-blind:
    it runs once (its choices depend on neither routers, snapshots nor reports)."""
    fleet0, mean_service, cfg = _base(world, setup)
    rate = offered_rate(world, factor * fleet_capacity_rps(fleet0, mean_service), setup.duration_s)
    grid = [(n, s, 1.0) for n in routers for s in intervals]
    grid += [(n, misreport_interval_s, rep) for rep in reports if rep != 1.0 for n in routers]
    blind: dict[str, PolicyResult] = {}
    rows = []
    for n, interval, rep in grid:
        factors = np.where(np.arange(len(fleet0.names)) % 2 == 0, rep, 1.0)
        fleet = replace(fleet0, report_factor=factors)
        run_cfg = replace(cfg, routers=n, snapshot_interval_s=interval)
        results = {}
        for name in policies:
            if name == "nearest" and name in blind:
                results[name] = blind[name]
                continue
            results[name] = _run(world, fleet, name, rate, run_cfg, setup)
            if name == "nearest":
                blind[name] = results[name]
        rows.append(StalenessRow(n, interval, rep, factor, results))
        if progress is not None:
            shares = ", ".join(f"{k} {100 * r.within_share():.1f}%" for k, r in results.items())
            progress(f"staleness routers={n} interval={interval}s report={rep}x: {shares}")
    return rows
