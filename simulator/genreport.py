"""Tables, ratios and plots of a generative simulation run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.genmetrics import GenResult
from simulator.genscenarios import GenScenario
from simulator.report import scenario_json

__all__ = ["gen_ratios", "gen_table", "gen_to_json", "plot_gen"]

BASELINES = ("nearest", "waterfall", "least-loaded")


def gen_table(results: Mapping[str, GenResult]) -> str:
    head = (
        "| policy | requests | TTFT p50 ms | TTFT p99 ms | TPOT p99 ms | goodput req/s"
        " | prefix-cache hit rate | GPU-s | failed | broken streams |"
    )
    lines = [head, "|---|" + "---:|" * 9]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.requests:,} | {r.ttft.quantile(0.5):,.0f}"
            f" | {r.ttft.quantile(0.99):,.0f}"
            f" | {r.tpot.quantile(0.99):.1f} | {r.goodput:,.0f} | {100 * r.hit_rate:.1f}%"
            f" | {r.gpu_s:,.0f} | {r.failed:,} | {r.broken:,} |"
        )
    return "\n".join(lines)


def gen_ratios(results: Mapping[str, GenResult]) -> dict[str, float]:
    """Meridian's goodput over the best baseline's and over the oracle's."""
    out: dict[str, float] = {}
    if "meridian" not in results:
        return out
    m = results["meridian"].goodput
    base = [results[b].goodput for b in BASELINES if b in results]
    if base:
        out["goodput_meridian_over_best_baseline"] = m / max(max(base), 1e-9)
    if "oracle" in results:
        out["goodput_meridian_over_oracle"] = m / max(results["oracle"].goodput, 1e-9)
    return out


def gen_to_json(scenario: GenScenario, results: Mapping[str, GenResult]) -> dict[str, Any]:
    return scenario_json(scenario, results, gen_ratios(results))


def plot_gen(results: Mapping[str, GenResult], title: str, path: Path) -> None:
    """TTFT CDF per policy (left) and goodput per policy (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9.6, 3.6), dpi=80)
    for name, r in results.items():
        h = r.ttft
        if h.n == 0:
            continue
        cdf = np.cumsum(h.counts) / h.n
        edges = h.edges()[1:]
        keep = (cdf > 0.001) & (np.concatenate([[1.0], cdf[:-1]]) < 0.99999)
        ax.plot(edges[keep], cdf[keep], label=name, lw=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("time to first token (ms)")
    ax.set_ylabel("fraction of streams")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    names = list(results)
    bx.bar(names, [results[n].goodput for n in names], color="tab:blue")
    bx.set_ylabel("goodput (req/s in SLO)")
    bx.tick_params(axis="x", labelrotation=30, labelsize=8)
    bx.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
