"""Fleet simulator throughput and Meridian's p99 against the baselines under a burst.

``python3 -m bench.simulator [--quick]``: the burst scenario (clients near Frankfurt
send 4x traffic for 40% of the run) at 100,000 requests/s over the 32 AWS regions
(``--quick``: 20,000 requests/s for 10 s), nearest / waterfall / Meridian on the
same arrivals; reports simulated requests per wall-clock second and the p99 ratios.
Then the generative scenarios (token streams, prefix caches; ``--quick``: 2,000 req/s for
10 s, else 20,000 req/s for 60 s): Meridian's goodput over the best of nearest /
waterfall / least-loaded and over the oracle's, per scenario.
"""

from __future__ import annotations

from bench.report import parse_args, record, table
from simulator.genreport import gen_ratios, gen_table
from simulator.genscenarios import GEN_SCENARIOS, GenWorld, gen_standard, run_gen
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
    gen_rate, gen_duration = (2_000.0, 10.0) if args.quick else (20_000.0, 60.0)
    gen_world = GenWorld.load(data)
    for name in GEN_SCENARIOS:
        scenario = gen_standard(name, gen_rate, gen_duration)
        gen = run_gen(gen_world, scenario, progress=print)
        walls = ", ".join(f"{n} {r.wall_s:.0f} s" for n, r in gen.items())
        body += f"\n\n### {name}: {scenario.description}\n\n{gen_table(gen)}\n\nwall: {walls}"
        key = name.removeprefix("gen-").replace("-", "_")
        for k, v in gen_ratios(gen).items():
            figures[f"{key}_{k}"] = round(v, 3)
    body += (
        f"\n\nGenerative: {gen_rate:,.0f} req/s offered for {gen_duration:.0f} s of simulated"
        " time, 32 regions (see docs/simulation.md, generative traffic)."
    )
    record(
        "simulator",
        "Fleet simulator: burst scenario and generative scenarios",
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
