"""``meridian simulate``: the fleet simulator, every policy side by side on the same traffic."""

from __future__ import annotations

import argparse
from pathlib import Path

SCENARIO_CHOICES = (
    "steady",
    "burst",
    "region-failure",
    "follow-the-sun",
    "all",
    "overload",
    "staleness",
    "gen-steady",
    "gen-burst",
    "gen-follow-the-sun",
    "gen-region-failure",
)
GEN_POLICY_NAMES = "nearest,waterfall,least-loaded,meridian,meridian-no-admission,oracle"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=SCENARIO_CHOICES, default="all")
    parser.add_argument("--duration", type=float, default=None, help="simulated seconds (30)")
    parser.add_argument("--rate", type=float, default=None, help="mean requests/s (100000)")
    parser.add_argument("--out", type=Path, default=Path("simulation-out"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="20,000 req/s for 10 s")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="full data directory laid out like shared/data (default: $MERIDIAN_DATA,"
        " else the extracts shipped in simulator/defaults)",
    )
    parser.add_argument(
        "--policies",
        default="nearest,waterfall,round-robin,meridian,oracle",
        help="comma-separated subset of nearest,waterfall,round-robin,meridian,oracle",
    )
    parser.add_argument("--trace", choices=("conv", "code", "mooncake"), default="conv")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--detection", type=float, default=1.0, help="health detection delay s")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--workload",
        choices=("oneshot", "generative"),
        default=None,
        help="one-shot requests (default) or generative token streams (also implied by a"
        " gen-* scenario); generative defaults: 20,000 req/s for 60 s, policies "
        + GEN_POLICY_NAMES,
    )


def main(args: argparse.Namespace) -> int:
    import sys

    generative = args.workload == "generative" or args.scenario.startswith("gen-")
    if generative:
        return main_generative(args)
    if args.scenario in ("overload", "staleness"):
        return main_overload(args)
    from dataclasses import replace

    import orjson

    from simulator.engine import SimConfig
    from simulator.report import plot_cdfs, plot_map, summary_table, to_json, utilization_table
    from simulator.scenarios import POLICIES, SCENARIOS, World, run_scenario, standard
    from simulator.sources import DEFAULTS, configured_data_dir

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        print(f"unknown policy: {', '.join(unknown)} (choose from {', '.join(POLICIES)})")
        return 2
    data: Path | None = args.data or configured_data_dir()
    if data is not None and not (data / "latency").is_dir():
        print(
            f"no data directory at {data} (no latency/ in it): pass --data DIR laid out like"
            " shared/data, or neither --data nor MERIDIAN_DATA for the shipped extracts",
            file=sys.stderr,
        )
        return 2
    rate = args.rate if args.rate is not None else (20_000.0 if args.quick else 100_000.0)
    duration = args.duration if args.duration is not None else (10.0 if args.quick else 30.0)
    if rate <= 0 or duration <= 0:
        print("--rate and --duration must be positive", file=sys.stderr)
        return 2
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    world = World.load(data, args.trace)
    print(f"data: {data if data is not None else f'shipped extracts in {DEFAULTS}'}")
    config = replace(SimConfig(), detection_s=args.detection)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in names:
        scenario = standard(name, rate, duration)
        results = run_scenario(
            world, scenario, policies, seed=args.seed, config=config, progress=print
        )
        print(f"\n## {name}: {scenario.description}\n")
        print(summary_table(results))
        print()
        print(utilization_table(results))
        print()
        report[name] = to_json(scenario, results)
        for k, v in report[name]["ratios"].items():
            print(f"{name}.{k}={v:.3f}")
        if not args.no_plots:
            plot_cdfs(results, f"{name}: latency CDF", out / f"{name}-cdf.png")
            if "meridian" in results:
                plot_map(results["meridian"], world, f"{name}: meridian", out / f"{name}-map.png")
    (out / "simulation.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out / 'simulation.json'}")
    return 0


def main_generative(args: argparse.Namespace) -> int:
    """The generative scenarios: token-level engines, prefix caches, the KV-aware policy."""
    import sys
    from dataclasses import replace

    import orjson

    from simulator.genengine import GenConfig
    from simulator.genpolicies import GEN_POLICIES
    from simulator.genreport import gen_table, gen_to_json, plot_gen
    from simulator.genscenarios import GEN_SCENARIOS, GenWorld, gen_standard, run_gen
    from simulator.sources import DEFAULTS, configured_data_dir

    names_arg = args.policies
    if names_arg == "nearest,waterfall,round-robin,meridian,oracle":  # the one-shot default
        names_arg = GEN_POLICY_NAMES
    policies = [p.strip() for p in names_arg.split(",") if p.strip()]
    unknown = [p for p in policies if p not in GEN_POLICIES]
    if unknown:
        print(f"unknown policy: {', '.join(unknown)} (choose from {', '.join(GEN_POLICIES)})")
        return 2
    data: Path | None = args.data or configured_data_dir()
    if data is not None and not (data / "traces").is_dir():
        print(f"no data directory at {data} (no traces/ in it)", file=sys.stderr)
        return 2
    # --quick: the trace's first 20 s, which hold its first peak, at a rate of 20 tenants
    rate = args.rate if args.rate is not None else (1_000.0 if args.quick else 20_000.0)
    duration = args.duration if args.duration is not None else (20.0 if args.quick else 60.0)
    if rate <= 0 or duration <= 0:
        print("--rate and --duration must be positive", file=sys.stderr)
        return 2
    if args.scenario == "all":
        names: tuple[str, ...] = GEN_SCENARIOS
    elif args.scenario.startswith("gen-"):
        names = (args.scenario,)
    else:
        names = ("gen-" + args.scenario,)
    world = GenWorld.load(data)
    print(f"data: {data if data is not None else f'shipped extracts in {DEFAULTS}'}")
    config = replace(GenConfig(), detection_s=args.detection)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in names:
        scenario = gen_standard(name, rate, duration)
        results = run_gen(world, scenario, policies, seed=args.seed, config=config, progress=print)
        print(f"\n## {name}: {scenario.description}\n")
        print(gen_table(results))
        print()
        report[name] = gen_to_json(scenario, results)
        for k, v in report[name]["ratios"].items():
            print(f"{name}.{k}={v:.3f}")
        if not args.no_plots:
            plot_gen(results, f"{name}: time to first token and goodput", out / f"{name}.png")
    (out / "simulation-generative.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    print(f"\nwrote {out / 'simulation-generative.json'}")
    return 0


def main_overload(args: argparse.Namespace) -> int:
    """Offered load past the fleet's capacity (admission control, goodput), and many
    routers on stale snapshots with misreported capacities. ``--rate`` sizes the fleet
    (5,000 req/s; ``--quick`` 2,000); the offered load is a multiple of its capacity."""
    import sys

    import orjson

    from simulator.overload import OverloadSetup, run_overload, run_staleness
    from simulator.overload_report import (
        overload_json,
        overload_table,
        plot_overload,
        plot_staleness,
        staleness_json,
        staleness_table,
    )
    from simulator.scenarios import World
    from simulator.sources import configured_data_dir

    data: Path | None = args.data or configured_data_dir()
    if data is not None and not (data / "latency").is_dir():
        print(f"no data directory at {data} (no latency/ in it)", file=sys.stderr)
        return 2
    nominal = args.rate if args.rate is not None else (2_000.0 if args.quick else 5_000.0)
    duration = args.duration if args.duration is not None else (8.0 if args.quick else 20.0)
    if nominal <= 0 or duration <= 0:
        print("--rate and --duration must be positive", file=sys.stderr)
        return 2
    world = World.load(data, args.trace)
    setup = OverloadSetup(nominal_rps=nominal, duration_s=duration, seed=args.seed)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {}
    if args.scenario == "overload":
        runs = run_overload(world, setup, progress=print)
        print(f"\n## overload: fleet sized for {nominal:,.0f} req/s, {duration:g} s\n")
        print(overload_table(runs))
        report = overload_json(runs)
        if not args.no_plots:
            plot_overload(runs, "overload: goodput and p99 of admitted", out / "overload.png")
    else:
        rows = run_staleness(
            world, setup, factor=0.8, policies=("nearest", "meridian"), progress=print
        )
        print(f"\n## staleness at 0.8x capacity: fleet sized for {nominal:,.0f} req/s\n")
        print(staleness_table(rows))
        hot = run_staleness(
            world, setup, factor=1.0, policies=("nearest", "meridian+admission"), progress=print
        )
        print("\n## staleness at 1.0x capacity, Meridian with admission\n")
        print(staleness_table(hot))
        report = {
            "x0_8": staleness_json(rows, "meridian"),
            "x1_0": staleness_json(hot, "meridian+admission"),
        }
        if not args.no_plots:
            plot_staleness(rows, "staleness at 0.8x capacity", out / "staleness-0.8.png")
            plot_staleness(hot, "staleness at 1.0x capacity", out / "staleness-1.0.png")
    print()
    for section, body in report.items() if args.scenario == "staleness" else [("", report)]:
        assert isinstance(body, dict)
        for k, v in body["ratios"].items():
            print(f"{args.scenario}.{section + '.' if section else ''}{k}={v:.3f}")
    name = f"simulation-{args.scenario}.json"
    (out / name).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {out / name}")
    return 0
