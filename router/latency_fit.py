"""Refit the latency model from real ping data: ``python3 -m router.latency_fit [--data DIR]``.

Fits :class:`router.latency.LatencyModel` by least absolute deviations to the
WonderProxy city-to-city pings (client cities to datacenter cities) and reports
its error there and on two datacenter-to-datacenter matrices it was not fitted
on (AWS cloudping p50, Azure network latency). Files are read by path from the
data directory (``--data``, else ``$MERIDIAN_DATA``, else ``../shared/data``
beside the checkout). The pings state no licence and are not shipped: without
them the constants last fitted to them (``simulator/defaults/latency-model.json``)
are evaluated on the AWS and Azure extracts shipped with the simulator.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.latency import FITTED, FloatArray, LatencyModel, great_circle_km_array
from simulator.sources import DEFAULTS, InterRegion, aws_inter_region, azure_inter_region

WONDERPROXY = "latency/sm86_geo-latency-data"
FITTED_CONSTANTS = DEFAULTS / "latency-model.json"


def default_data_dir() -> Path:
    env = os.environ.get("MERIDIAN_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@dataclass(frozen=True, slots=True)
class Pairs:
    """Distances (km) and measured RTTs (ms) of one data set."""

    name: str
    km: FloatArray
    rtt_ms: FloatArray


@dataclass(frozen=True, slots=True)
class FitError:
    n: int
    mae_ms: float
    p90_abs_ms: float
    r2: float
    median_signed_ms: float


def load_wonderproxy(data: Path) -> Pairs:
    coords: dict[int, tuple[float, float]] = {}
    with open(data / WONDERPROXY / "servers-2020-07-19.csv", newline="") as f:
        for row in csv.DictReader(f):
            try:
                coords[int(row["id"])] = (float(row["latitude"]), float(row["longitude"]))
            except (KeyError, ValueError):
                continue
    a_lat, a_lon, b_lat, b_lon, rtt = [], [], [], [], []
    path = data / WONDERPROXY / "pings-2020-07-19-2020-07-20-grouped.csv"
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            s, d = int(row["source"]), int(row["destination"])
            if s == d or s not in coords or d not in coords:
                continue  # self-pings and ids missing from the servers file
            a_lat.append(coords[s][0])
            a_lon.append(coords[s][1])
            b_lat.append(coords[d][0])
            b_lon.append(coords[d][1])
            rtt.append(float(row["avg"]))
    km = great_circle_km_array(np.array(a_lat), np.array(a_lon), np.array(b_lat), np.array(b_lon))
    return Pairs("WonderProxy city pings", km, np.array(rtt))


def load_aws(data: Path | None = None) -> Pairs:
    """The AWS cloudping p50 matrix; ``data=None``: the extract shipped with the simulator."""
    return _inter_region_pairs("AWS inter-region p50 (cloudping)", aws_inter_region(data))


def load_azure(data: Path | None = None) -> Pairs:
    """The Azure median matrix; ``data=None``: the extract shipped with the simulator."""
    return _inter_region_pairs("Azure inter-region median", azure_inter_region(data))


def load_fitted(path: Path = FITTED_CONSTANTS) -> LatencyModel:
    """The constants last fitted to the pings, as shipped (the pings themselves are not)."""
    raw = json.loads(path.read_text())["model"]
    return LatencyModel(
        base_ms=float(raw["base_ms"]),
        near_ms_per_km=float(raw["near_ms_per_km"]),
        far_ms_per_km=float(raw["far_ms_per_km"]),
        knee_km=float(raw["knee_km"]),
    )


def _inter_region_pairs(name: str, m: InterRegion) -> Pairs:
    rows = [
        (m.coords[s], m.coords[d], ms)
        for s, dst in m.rtt_ms.items()
        for d, ms in dst.items()
        if s != d and s in m.coords and d in m.coords
    ]
    return _pairs(name, rows)


def _pairs(name: str, rows: list[tuple[tuple[float, float], tuple[float, float], float]]) -> Pairs:
    a = np.array([r[0] for r in rows])
    b = np.array([r[1] for r in rows])
    km = great_circle_km_array(a[:, 0], a[:, 1], b[:, 0], b[:, 1])
    return Pairs(name, km, np.array([r[2] for r in rows]))


def fit(pairs: Pairs, knees: Sequence[float] = (500, 1000, 1500, 2000, 3000)) -> LatencyModel:
    """Least-absolute-deviation fit (IRLS) of the piecewise-linear model; best knee wins."""
    best: tuple[float, LatencyModel] | None = None
    for knee in knees:
        basis = np.column_stack(
            [np.ones_like(pairs.km), np.minimum(pairs.km, knee), np.maximum(pairs.km - knee, 0)]
        )
        w: FloatArray = np.ones_like(pairs.rtt_ms)
        coef: FloatArray = np.zeros(3)
        for _ in range(40):
            coef = np.asarray(np.linalg.lstsq(basis * w[:, None], pairs.rtt_ms * w, rcond=None)[0])
            w = np.asarray(1.0 / np.sqrt(np.maximum(np.abs(basis @ coef - pairs.rtt_ms), 1.0)))
        model = LatencyModel(float(coef[0]), float(coef[1]), float(coef[2]), float(knee))
        mae = evaluate(model, pairs).mae_ms
        if best is None or mae < best[0]:
            best = (mae, model)
    assert best is not None
    return best[1]


def evaluate(model: LatencyModel, pairs: Pairs) -> FitError:
    pred = model.rtt_ms_array(pairs.km)
    err = pred - pairs.rtt_ms
    y = pairs.rtt_ms
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return FitError(
        n=len(y),
        mae_ms=float(np.abs(err).mean()),
        p90_abs_ms=float(np.percentile(np.abs(err), 90)),
        r2=1.0 - ss_res / ss_tot,
        median_signed_ms=float(np.median(err)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="the shared data directory")
    args = p.parse_args(argv)
    data: Path = args.data or default_data_dir()
    shipped = load_fitted()
    print(f"embedded: {FITTED}")
    print(f"shipped:  {shipped} ({FITTED_CONSTANTS.name})")
    if not (data / WONDERPROXY).is_dir():
        # the pings carry no licence, so only the constants fitted to them are shipped
        print(
            f"no ping data at {data / WONDERPROXY}: no refit; the shipped constants"
            " on the shipped AWS and Azure extracts",
            file=sys.stderr,
        )
        models: list[tuple[str, LatencyModel]] = [("shipped", shipped)]
        sets = [load_aws(), load_azure()]
    else:
        wonder = load_wonderproxy(data)
        model = fit(wonder)
        print(
            f"fit on {len(wonder.km):,} pairs: rtt_ms = {model.base_ms:.3f}"
            f" + {model.near_ms_per_km:.5f}*min(km,{model.knee_km:.0f})"
            f" + {model.far_ms_per_km:.5f}*max(km-{model.knee_km:.0f},0)"
            f"  (long-haul route inflation {model.route_inflation():.2f}x light in fibre)"
        )
        models = [("refit", model), ("embedded", FITTED)]
        sets = [wonder, load_aws(data), load_azure(data)]
    print("| data set | pairs | MAE ms | p90 abs err ms | R² | median signed err ms |")
    print("|---|---|---|---|---|---|")
    for pairs in sets:
        for label, m in models:
            e = evaluate(m, pairs)
            print(
                f"| {pairs.name} ({label}) | {e.n:,} | {e.mae_ms:.1f} | {e.p90_abs_ms:.1f}"
                f" | {e.r2:.3f} | {e.median_signed_ms:+.1f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
