"""Tables, ratios and plots of a generative simulation run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.genmetrics import GenResult
from simulator.genscenarios import GenScenario
from simulator.report import scenario_json

__all__ = ["gen_ratio_line", "gen_ratios", "gen_table", "gen_to_json", "plot_gen"]

BASELINES = ("nearest", "waterfall", "least-loaded")


def gen_table(results: Mapping[str, GenResult]) -> str:
    head = (
        "| policy | requests | TTFT p50 ms | TTFT p99 ms | TPOT p99 ms | goodput req/s"
        " | prefix-cache hit rate | GPU-s | refused: deadline | refused: capacity | failed"
        " | broken streams |"
    )
    lines = [head, "|---|" + "---:|" * 11]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.requests:,} | {r.ttft.quantile(0.5):,.0f}"
            f" | {r.ttft.quantile(0.99):,.0f}"
            f" | {r.tpot.quantile(0.99):.1f} | {r.goodput:,.0f} | {100 * r.hit_rate:.1f}%"
            f" | {r.gpu_s:,.0f} | {r.refused_late:,} | {r.refused_full:,} | {r.failed:,}"
            f" | {r.broken:,} |"
        )
    return "\n".join(lines)


def gen_ratios(results: Mapping[str, GenResult]) -> dict[str, float]:
    """Meridian's goodput (with admission, and without) over the best baseline's, over
    the oracle's, and with admission over without."""
    out: dict[str, float] = {}
    base = [results[b].goodput for b in BASELINES if b in results]
    for name, key in (("meridian", "meridian"), ("meridian-no-admission", "meridian_no_admission")):
        if name not in results:
            continue
        m = results[name].goodput
        if base:
            out[f"goodput_{key}_over_best_baseline"] = m / max(max(base), 1e-9)
        if "oracle" in results:
            out[f"goodput_{key}_over_oracle"] = m / max(results["oracle"].goodput, 1e-9)
    if "meridian" in results and "meridian-no-admission" in results:
        out["goodput_admission_over_none"] = results["meridian"].goodput / max(
            results["meridian-no-admission"].goodput, 1e-9
        )
    return out


def gen_ratio_line(results: Mapping[str, GenResult]) -> str:
    """Meridian's goodput side by side with the best baseline's and the oracle's, with
    and without admission, and what admission refused."""
    base = [b for b in BASELINES if b in results]
    if "meridian" not in results or not base:
        return ""
    best = max(base, key=lambda b: results[b].goodput)
    m = results["meridian"]
    parts = [
        f"Meridian {m.goodput:,.0f} req/s in both targets vs {best} (best baseline)"
        f" {results[best].goodput:,.0f}: {m.goodput / max(results[best].goodput, 1e-9):.3f}x"
    ]
    if "oracle" in results:
        o = results["oracle"]
        parts.append(f"{m.goodput / max(o.goodput, 1e-9):.3f}x the oracle ({o.goodput:,.0f})")
    if "meridian-no-admission" in results:
        n = results["meridian-no-admission"]
        parts.append(
            f"without admission {n.goodput:,.0f} req/s"
            f" ({n.goodput / max(results[best].goodput, 1e-9):.3f}x {best})"
        )
    parts.append(
        f"refused at once {m.refused:,} of {m.requests:,}"
        f" ({m.refused_late:,} deadline, {m.refused_full:,} capacity)"
    )
    return "; ".join(parts)


def gen_to_json(scenario: GenScenario, results: Mapping[str, GenResult]) -> dict[str, Any]:
    return scenario_json(scenario, results, gen_ratios(results))


def plot_gen(results: Mapping[str, GenResult], title: str, path: Path) -> None:
    """TTFT CDF per policy (left); goodput and refusals per policy (right)."""
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
    x = np.arange(len(names))
    good = [results[n].goodput for n in names]
    refused = [results[n].refused / results[n].duration_s for n in names]
    bx.bar(x - 0.2, good, width=0.4, color="tab:blue", label="goodput")
    bx.bar(x + 0.2, refused, width=0.4, color="tab:gray", label="refused at once")
    bx.set_xticks(x, names)
    bx.legend(fontsize=8)
    bx.set_ylabel("req/s (goodput: within both targets)")
    bx.tick_params(axis="x", labelrotation=30, labelsize=8)
    bx.grid(True, axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
