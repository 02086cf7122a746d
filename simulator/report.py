"""Tables, JSON and plots of a simulation run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from simulator.metrics import PolicyResult
from simulator.scenarios import Scenario, World

__all__ = ["plot_cdfs", "plot_map", "ratios", "summary_table", "utilization_table"]


def summary_table(results: Mapping[str, PolicyResult]) -> str:
    head = (
        "| policy | requests | mean ms | p50 ms | p95 ms | p99 ms | overhead p99 ms"
        " | SLO met | retried | failed | busiest region load |"
    )
    lines = [head, "|---|" + "---:|" * 10]
    for name, r in results.items():
        s = r.summary()
        lines.append(
            f"| {name} | {s['requests']:,} | {s['mean_ms']:.1f} | {s['p50_ms']:.1f}"
            f" | {s['p95_ms']:.1f} | {s['p99_ms']:.1f} | {s['overhead_p99_ms']:.1f}"
            f" | {100 * s['slo_attainment']:.2f}% | {s['retried']:,} | {s['failed']:,}"
            f" | {s['max_utilization']:.2f} |"
        )
    return "\n".join(lines)


def utilization_table(results: Mapping[str, PolicyResult], top: int = 8) -> str:
    """Offered load (GPU-time sent / GPU-time available) of the busiest regions
    (busiest under any policy but round robin, which overloads the small ones)."""
    first = next(iter(results.values()))
    ranked = [r for n, r in results.items() if n != "round-robin"] or list(results.values())
    peak = np.max([r.utilization() for r in ranked], axis=0)
    order = np.argsort(-peak)[:top]
    lines = ["| region | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for i in order:
        cells = " | ".join(f"{r.utilization()[i]:.2f}" for r in results.values())
        lines.append(f"| {first.regions[i]} | {cells} |")
    return "\n".join(lines)


def ratios(results: Mapping[str, PolicyResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "meridian" not in results:
        return out
    m = results["meridian"]
    for other in ("nearest", "waterfall", "round-robin"):
        if other in results:
            out[f"p99_meridian_over_{other}"] = m.latency.quantile(0.99) / results[
                other
            ].latency.quantile(0.99)
    if "oracle" in results:
        out["mean_meridian_over_oracle"] = m.latency.mean() / results["oracle"].latency.mean()
    return out


def to_json(scenario: Scenario, results: Mapping[str, PolicyResult]) -> dict[str, Any]:
    return scenario_json(scenario, results, ratios(results))


def scenario_json(
    scenario: Any, results: Mapping[str, Any], figures: Mapping[str, float]
) -> dict[str, Any]:
    """One scenario's report: what it was, each policy's summary, the headline ratios
    (one-shot and generative scenarios alike)."""
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "rate_rps": scenario.rate_rps,
        "duration_s": scenario.duration_s,
        "policies": {n: r.summary() for n, r in results.items()},
        "ratios": dict(figures),
    }


def plot_cdfs(results: Mapping[str, PolicyResult], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    for name, r in results.items():
        h = r.latency
        if h.n == 0:
            continue
        cdf = np.cumsum(h.counts) / h.n
        edges = h.edges()[1:]
        keep = (cdf > 0.001) & (np.concatenate([[1.0], cdf[:-1]]) < 0.99999)
        ax.plot(edges[keep], cdf[keep], label=name, lw=1.4)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_map(result: PolicyResult, world: World, title: str, path: Path, top: int = 200) -> None:
    """Regions (size = requests served) and the largest city -> region flows on lon/lat:
    blue to the city's nearest region, orange spilled to another region."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from router.latency import great_circle_km_array

    r, p = world.regions, world.places
    km = great_circle_km_array(p.lat[:, None], p.lon[:, None], r.lat[None, :], r.lon[None, :])
    nearest = np.argmin(km, axis=1)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=80)
    ax.scatter(p.lon, p.lat, s=1, c="0.75", lw=0)
    flows = result.flows
    local = np.zeros_like(flows, dtype=bool)
    local[np.arange(len(nearest)), nearest] = True
    peak = float(flows.max()) if flows.size and flows.max() > 0 else 1.0
    for mask, color, label in (
        (local, "tab:blue", "to nearest"),
        (~local, "tab:orange", "spilled"),
    ):
        vals = np.where(mask, flows, 0.0)
        order = np.argsort(vals, axis=None)[::-1][:top]
        first = True
        for k in order:
            c, j = divmod(int(k), flows.shape[1])
            if vals[c, j] <= 0:
                break
            ax.plot(
                [p.lon[c], r.lon[j]],
                [p.lat[c], r.lat[j]],
                color=color,
                alpha=float(min(1.0, 0.25 + 3.0 * vals[c, j] / peak)),
                lw=0.8,
                label=label if first else None,
            )
            first = False
    served = result.served / max(float(result.served.max()), 1.0)
    ax.scatter(r.lon, r.lat, s=20 + 180 * served, c="tab:red", alpha=0.8, zorder=3)
    ax.set_xlim(-180, 180)
    ax.set_ylim(-60, 75)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
