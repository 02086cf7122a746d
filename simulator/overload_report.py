"""Tables, figures and plots of the overload and staleness runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simulator.metrics import PolicyResult
from simulator.overload import StalenessRow

__all__ = [
    "overload_figures",
    "overload_json",
    "overload_table",
    "plot_overload",
    "plot_staleness",
    "staleness_figures",
    "staleness_json",
    "staleness_table",
]

ADMITTING = "meridian+admission"


def overload_table(runs: Mapping[float, Mapping[str, PolicyResult]]) -> str:
    head = (
        "| offered | policy | requests | refused | goodput req/s | goodput / capacity"
        " | within deadline | p99 of admitted ms | refused class 0 / 1 |"
    )
    lines = [head, "|---|---|" + "---:|" * 7]
    for f, results in runs.items():
        for name, r in results.items():
            by = " / ".join(f"{int(x):,}" for x in r.refused_by_class)
            lines.append(
                f"| {f:g}x | {name} | {r.requests:,} | {r.refused:,} | {r.goodput_rps():,.0f}"
                f" | {r.goodput_rps() / r.fleet_capacity_rps:.3f}"
                f" | {100 * r.within_share():.1f}% | {r.latency.quantile(0.99):,.0f} | {by} |"
            )
    return "\n".join(lines)


def overload_figures(runs: Mapping[float, Mapping[str, PolicyResult]]) -> dict[str, float]:
    """Goodput over capacity and over the baselines', p99 of admitted over the deadline."""
    out: dict[str, float] = {}
    for f, results in runs.items():
        key = f"x{f:g}".replace(".", "_")
        m = results.get(ADMITTING)
        if m is None:
            continue
        out[f"{key}_goodput_over_capacity"] = m.goodput_rps() / m.fleet_capacity_rps
        for other in ("nearest", "waterfall", "meridian"):
            if other in results and results[other].goodput_rps() > 0:
                base = results[other].goodput_rps()
                out[f"{key}_goodput_over_{other.replace('+', '_')}"] = m.goodput_rps() / base
        out[f"{key}_p99_admitted_over_deadline"] = m.latency.quantile(0.99) / m.deadline_ms
    return out


def overload_json(runs: Mapping[float, Mapping[str, PolicyResult]]) -> dict[str, Any]:
    return {
        "runs": {f"{f:g}": {n: r.summary() for n, r in rs.items()} for f, rs in runs.items()},
        "ratios": overload_figures(runs),
    }


def staleness_table(rows: Sequence[StalenessRow]) -> str:
    names = list(rows[0].results) if rows else []
    head = "| routers | snapshot every | reported capacity | " + " | ".join(
        f"{n} within deadline | {n} SLO met | {n} p99 ms" for n in names
    )
    lines = [head + " |", "|---:|---:|---|" + "---:|" * (3 * len(names))]
    for row in rows:
        rep = "honest" if row.report == 1.0 else f"{row.report:g}x on every second region"
        cells = " | ".join(
            f"{100 * r.within_share():.1f}% | {100 * r.slo_met / max(r.requests, 1):.1f}%"
            f" | {r.latency.quantile(0.99):,.0f}"
            for r in row.results.values()
        )
        lines.append(f"| {row.routers} | {row.interval_s:g} s | {rep} | {cells} |")
    return "\n".join(lines)


def staleness_figures(rows: Sequence[StalenessRow], policy: str) -> dict[str, float]:
    """``policy``'s share within deadline over nearest's: the worst setting and each one."""
    out: dict[str, float] = {}
    worst = float("inf")
    for row in rows:
        if policy not in row.results or "nearest" not in row.results:
            continue
        base = max(row.results["nearest"].within_share(), 1e-9)
        ratio = row.results[policy].within_share() / base
        key = f"n{row.routers}_s{row.interval_s:g}_r{row.report:g}".replace(".", "_")
        out[f"{key}_within_over_nearest"] = ratio
        worst = min(worst, ratio)
    if out:
        out["worst_within_over_nearest"] = worst
    return out


def staleness_json(rows: Sequence[StalenessRow], policy: str) -> dict[str, Any]:
    return {
        "rows": [
            {
                "routers": r.routers,
                "snapshot_interval_s": r.interval_s,
                "report_factor": r.report,
                "offered_over_capacity": r.factor,
                "policies": {n: x.summary() for n, x in r.results.items()},
            }
            for r in rows
        ],
        "ratios": staleness_figures(rows, policy),
    }


def plot_overload(runs: Mapping[float, Mapping[str, PolicyResult]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = list(runs)
    names = list(next(iter(runs.values())))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 3.6), dpi=80)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(factors))
    for k, name in enumerate(names):
        good = [runs[f][name].goodput_rps() / runs[f][name].fleet_capacity_rps for f in factors]
        p99 = [runs[f][name].latency.quantile(0.99) for f in factors]
        ax.bar(x + k * width, good, width, label=name)
        bx.bar(x + k * width, p99, width, label=name)
    deadline = next(iter(next(iter(runs.values())).values())).deadline_ms
    for a in (ax, bx):
        a.set_xticks(x + width * (len(names) - 1) / 2, [f"{f:g}x offered" for f in factors])
        a.grid(True, axis="y", alpha=0.3)
    ax.axhline(0.9, color="k", lw=0.8, ls="--")
    ax.set_ylabel("goodput / fleet capacity")
    bx.axhline(deadline, color="k", lw=0.8, ls="--")
    bx.set_yscale("log")
    bx.set_ylabel("p99 latency of admitted (ms)")
    ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_staleness(rows: Sequence[StalenessRow], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows[0].results)
    labels = [
        f"{r.routers}r {r.interval_s:g}s" + ("" if r.report == 1.0 else f" {r.report:g}x")
        for r in rows
    ]
    fig, ax = plt.subplots(figsize=(9.6, 3.6), dpi=80)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(rows))
    for k, name in enumerate(names):
        share = [100 * r.results[name].within_share() for r in rows]
        ax.bar(x + k * width, share, width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, labels, rotation=60, fontsize=7)
    ax.set_ylabel("% of requests within deadline")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
