"""Fleet simulator throughput and Meridian's p99 against the baselines under a burst.

``python3 -m bench.simulator [--quick]``: the burst scenario (clients near Frankfurt
send 4x traffic for 40% of the run) at 100,000 requests/s over the 32 AWS regions
(``--quick``: 20,000 requests/s for 10 s), nearest / waterfall / Meridian on the
same arrivals; reports simulated requests per wall-clock second and the p99 ratios.
Then the generative scenarios (token streams, prefix caches; ``--quick``: 1,000 req/s
for 20 s, which hold the trace's first peak, else 20,000 req/s for 60 s): Meridian's
goodput (KV-aware routing with the router's admission: a stream that cannot have its
first token within the TTFT target is refused at once) over the best of nearest /
waterfall / least-loaded and over the oracle's (with the same admission), and
Meridian's without admission, per scenario.
Then overload (docs/simulation.md, overload and staleness): the fleet offered 0.8x,
1.5x and 2.5x its capacity, Meridian with admission control against nearest, waterfall
and Meridian without it (goodput: requests within their deadline per second), and 16
router replicas on 1 s and 5 s snapshots with half the regions misreporting their
capacity (``--quick``: a 1,500 req/s fleet for 5 s, 1 s snapshots only; else a 5,000
req/s fleet for 20 s).
"""

from __future__ import annotations

from bench.report import parse_args, record, table
from simulator.genreport import gen_ratio_line, gen_ratios, gen_table
from simulator.genscenarios import GEN_SCENARIOS, GenWorld, gen_standard, run_gen
from simulator.overload import OverloadSetup, run_overload, run_staleness
from simulator.overload_report import (
    overload_figures,
    overload_table,
    staleness_figures,
    staleness_table,
)
from simulator.scenarios import World, run_scenario, standard
from simulator.sources import configured_data_dir


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    # the full files where MERIDIAN_DATA names them, else the shipped extracts (same arrays)
    data = configured_data_dir()
    rate, duration = (20_000.0, 10.0) if args.quick else (100_000.0, 30.0)
    world = World.load(data)
    results = run_scenario(
        world, standard("burst", rate, duration), ["nearest", "waterfall", "meridian"]
    )
    rows = []
    for name, r in results.items():
        rows.append(
            (
                name,
                r.requests,
                r.latency.quantile(0.5),
                r.latency.quantile(0.99),
                r.wall_s,
                r.requests / r.wall_s,
            )
        )
    total = sum(r.requests for r in results.values())
    wall = sum(r.wall_s for r in results.values())
    m = results["meridian"].latency.quantile(0.99)
    body = table(
        ["policy", "requests", "p50 ms", "p99 ms", "wall s", "simulated req per wall s"], rows
    )
    body += f"\n\n{rate:,.0f} req/s offered for {duration:.0f} s of simulated time, 32 regions."
    figures: dict[str, float | int | str] = {}
    gen_rate, gen_duration = (1_000.0, 20.0) if args.quick else (20_000.0, 60.0)
    gen_world = GenWorld.load(data)
    for name in GEN_SCENARIOS:
        scenario = gen_standard(name, gen_rate, gen_duration)
        gen = run_gen(gen_world, scenario, progress=print)
        walls = ", ".join(f"{n} {r.wall_s:.0f} s" for n, r in gen.items())
        line = gen_ratio_line(gen)
        print(f"{name}: {line}")
        body += f"\n\n### {name}: {scenario.description}\n\n{gen_table(gen)}\n\n{line}"
        body += f"\n\nwall: {walls}"
        key = name.removeprefix("gen-").replace("-", "_")
        for k, v in gen_ratios(gen).items():
            figures[f"{key}_{k}"] = round(v, 3)
    body += (
        f"\n\nGenerative: {gen_rate:,.0f} req/s offered for {gen_duration:.0f} s of simulated"
        " time, 32 regions (see docs/simulation.md, generative traffic)."
    )
    setup = (
        OverloadSetup(nominal_rps=1500.0, duration_s=5.0)
        if args.quick
        else OverloadSetup(nominal_rps=5000.0, duration_s=20.0)
    )
    runs = run_overload(world, setup, progress=print)
    body += (
        f"\n\n### overload: a fleet sized for {setup.nominal_rps:,.0f} req/s offered 0.8x-2.5x"
        f" its capacity, {setup.duration_s:g} s, deadline {setup.deadline_ms:g} ms\n\n"
        + overload_table(runs)
    )
    for k, v in overload_figures(runs).items():
        figures[f"overload_{k}"] = round(v, 3)
    stale = run_staleness(
        world,
        setup,
        routers=(16,),
        intervals=(1.0,) if args.quick else (1.0, 5.0),
        reports=(1.0, 0.5, 2.0),
        factor=1.0,
        policies=("nearest", "meridian+admission"),
        progress=print,
    )
    body += (
        "\n\n### 16 routers on stale snapshots, capacity misreported by every second region,"
        " 1.0x capacity offered\n\n" + staleness_table(stale)
    )
    for k, v in staleness_figures(stale, "meridian+admission").items():
        figures[f"staleness_{k}"] = round(v, 3)
    record(
        "simulator",
        "Fleet simulator: burst, generative, overload and staleness scenarios",
        body,
        {
            **figures,
            "sim_requests_per_wall_s": round(total / wall),
            "meridian_sim_requests_per_wall_s": round(
                results["meridian"].requests / results["meridian"].wall_s
            ),
            "p99_meridian_over_nearest": round(m / results["nearest"].latency.quantile(0.99), 3),
            "p99_meridian_over_waterfall": round(
                m / results["waterfall"].latency.quantile(0.99), 3
            ),
            "offered_rps": rate,
            "regions": len(world.regions.names),
        },
        quick=args.quick,
        write=not args.no_write,
    )


if __name__ == "__main__":
    main()
