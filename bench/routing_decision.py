"""One routing decision at 30 regions: Meridian's table-driven policy vs a naive one.

``python3 -m bench.routing_decision [--quick]``. The naive implementation computes
the same cost (haversine RTT, Erlang-C queue wait, service time) region by region
in plain Python on every request; the policy precomputes per-snapshot arrays and
caches RTT rows per client-location bucket. Both rank the same 30-region fleet
for clients spread over the world's cities.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence

from bench.report import parse_args, record, table
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.latency import FITTED, great_circle_km
from router.policies import MeridianPolicy, RouteRequest, RouterStats


def fleet(n: int, rng: random.Random) -> RoutingSnapshot:
    regions = []
    for i in range(n):
        worker = WorkerView(f"w{i}", "http://127.0.0.1:1", HealthState.HEALTHY, ("m:1",))
        regions.append(
            RegionView(
                name=f"region-{i:02d}",
                state=HealthState.HEALTHY if i % 10 else HealthState.DEGRADED,
                lat=rng.uniform(-45, 60),
                lon=rng.uniform(-180, 180),
                capacity_rps=rng.uniform(500, 5000),
                in_flight=rng.randint(0, 300),
                queue_depth=rng.randint(0, 20),
                workers=(worker,),
            )
        )
    return RoutingSnapshot(version=1, generated_at=0.0, regions=tuple(regions))


def erlang_c_wait_ms(servers: int, rho: float, service_ms: float) -> float:
    """Exact M/M/c mean wait, summed term by term."""
    if rho >= 1.0:
        return math.inf
    a = servers * rho
    term, total = 1.0, 1.0
    for k in range(1, servers):
        term *= a / k
        total += term
    last = term * a / servers / (1 - rho)
    p_wait = last / (total + last)
    return p_wait * service_ms / (servers * (1 - rho))


def naive_rank(snap: RoutingSnapshot, req: RouteRequest, service_ms: float) -> list[str]:
    scored = []
    for r in snap.regions:
        if not r.state.routable or not r.serves(req.model) or r.capacity_rps <= 0:
            continue
        rtt = FITTED.rtt_ms(great_circle_km(req.lat, req.lon, r.lat, r.lon))
        servers = max(1, int(r.capacity_rps * service_ms / 1000))
        load = r.in_flight + r.queue_depth
        wait = erlang_c_wait_ms(servers, min(load / servers, 0.995), service_ms)
        wait += max(0, load - servers + 1) * 1000 / r.capacity_rps
        scored.append((rtt + wait + service_ms, r.name))
    scored.sort()
    return [name for _, name in scored]


def time_per_call(fn: object, requests: Sequence[RouteRequest], repeat: int) -> float:
    call = fn  # a callable taking a request
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for req in requests:
            call(req)  # type: ignore[operator]
        best = min(best, (time.perf_counter() - t0) / len(requests))
    return best


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    rng = random.Random(11)
    snap = fleet(30, rng)
    n = 2000 if args.quick else 20000
    requests = [
        RouteRequest(
            "m",
            rng.choice([48.9, 40.7, 35.7, -23.5, 19.1, 1.35]),
            rng.choice([2.3, -74.0, 139.7, -46.6, 72.9, 103.8]),
        )
        for _ in range(n)
    ]
    policy = MeridianPolicy()
    stats = RouterStats()
    stats.indices([r.name for r in snap.regions])

    def meridian(req: RouteRequest) -> list[str]:
        return policy.rank(snap, stats, req, 0.0)

    def meridian_live(req: RouteRequest) -> list[str]:
        ranked = policy.rank(snap, stats, req, 0.0)
        stats.on_dispatch(ranked[0], 0.0)  # stats change between decisions, as in the router
        return ranked

    refreshing = MeridianPolicy(refresh_s=0.001)
    clock = [0.0]

    def meridian_refresh(req: RouteRequest) -> list[str]:
        clock[0] += 1e-4  # 10,000 decisions per second of router time
        ranked = refreshing.rank(snap, stats, req, clock[0])
        stats.on_dispatch(ranked[0], clock[0])
        return ranked

    def naive(req: RouteRequest) -> list[str]:
        return naive_rank(snap, req, policy.default_service_ms)

    assert meridian(requests[0])[0] == naive(requests[0])[0]
    repeat = 3 if args.quick else 5
    t_policy = time_per_call(meridian, requests, repeat)
    t_live = time_per_call(meridian_live, requests[: n // 2], repeat)
    t_refresh = time_per_call(meridian_refresh, requests[: n // 2], repeat)
    t_naive = time_per_call(naive, requests[: max(200, n // 20)], repeat)
    rows = [
        ("Meridian policy, stats unchanged", t_policy * 1e6),
        ("Meridian policy + stats update per decision", t_live * 1e6),
        ("Meridian policy + stats update, region terms refreshed each 1 ms", t_refresh * 1e6),
        ("naive per-region loop (exact Erlang C)", t_naive * 1e6),
    ]
    body = table(["30-region decision", "µs per decision"], rows)
    record(
        "routing_decision",
        "Routing decision at 30 regions",
        body,
        {
            "decision_us": round(t_policy * 1e6, 2),
            "decision_with_stats_update_us": round(t_live * 1e6, 2),
            "decision_with_stats_update_1ms_refresh_us": round(t_refresh * 1e6, 2),
            "naive_decision_us": round(t_naive * 1e6, 2),
            "speedup_vs_naive": round(t_naive / t_policy, 1),
        },
        quick=args.quick,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
