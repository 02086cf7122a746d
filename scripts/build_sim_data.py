"""Rebuild the simulator's shipped data extracts from the full public data set.

``python scripts/build_sim_data.py [--data DIR] [--out DIR] [--check]`` reads the
full files (``--data``, else ``$MERIDIAN_DATA``, else ``../shared/data`` beside the
checkout) through ``simulator.sources`` and writes ``simulator/defaults/``: gzip'd
JSON, CSV and JSONL (mtime 0, fixed level, so a rerun gives the same bytes) and
``latency-model.json``, the latency model's constants refitted to the WonderProxy
pings, which are not shipped. ``--check`` builds in memory and fails when a shipped
file differs. The NOTICE beside the extracts is kept by hand.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
from pathlib import Path

from router.latency import LatencyModel
from router.latency_fit import (
    FITTED_CONSTANTS,
    WONDERPROXY,
    default_data_dir,
    evaluate,
    fit,
    load_aws,
    load_azure,
    load_wonderproxy,
)
from simulator.sources import (
    DEFAULTS,
    EXTRACTS,
    PLACE_FIELDS,
    aws_inter_region,
    azure_inter_region,
    open_trace,
    places,
)

MOONCAKE_FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
PINGS = {
    "repository": "sm86/geo-latency-data",
    "commit": "ad13da0f2aede93ae255a81cf6ab017f441d30ce",
    "files": ["servers-2020-07-19.csv", "pings-2020-07-19-2020-07-20-grouped.csv"],
    "what": "WonderProxy 'A day in the life of the Internet' city-to-city pings,"
    " 2020-07-19/20 (mean of ping -c 30, repeated hourly)",
    "licence": "none stated; the pings are not shipped, only these constants",
}


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=9, mtime=0)


def compact_json(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def places_csv(data: Path) -> bytes:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PLACE_FIELDS)
    for p in places(data):
        population = int(p.population) if p.population.is_integer() else p.population
        writer.writerow([p.name, p.country, repr(p.lat), repr(p.lon), population])
    return buf.getvalue().encode()


def mooncake_jsonl(data: Path) -> bytes:
    out = io.StringIO()
    with open_trace(data, "mooncake") as f:
        for line in f:
            rec = json.loads(line)
            out.write(json.dumps({k: rec[k] for k in MOONCAKE_FIELDS}, separators=(",", ":")))
            out.write("\n")
    return out.getvalue().encode()


def rounded(model: LatencyModel) -> LatencyModel:
    """The precision the constants are published at (and embedded in router/latency.py)."""
    return LatencyModel(
        base_ms=round(model.base_ms, 3),
        near_ms_per_km=round(model.near_ms_per_km, 5),
        far_ms_per_km=round(model.far_ms_per_km, 5),
        knee_km=float(model.knee_km),
    )


def latency_model_json(data: Path) -> bytes:
    wonder = load_wonderproxy(data)
    model = rounded(fit(wonder))
    errors = []
    held_out = [(load_aws(data), "held out"), (load_azure(data), "held out")]
    for pairs, role in [(wonder, "fit"), *held_out]:
        e = evaluate(model, pairs)
        errors.append(
            {
                "data": pairs.name,
                "role": role,
                "pairs": e.n,
                "mae_ms": round(e.mae_ms, 2),
                "p90_abs_ms": round(e.p90_abs_ms, 2),
                "r2": round(e.r2, 4),
                "median_signed_ms": round(e.median_signed_ms, 2),
            }
        )
    record = {
        "model": {
            "formula": "rtt_ms = base_ms + near_ms_per_km*min(km, knee_km)"
            " + far_ms_per_km*max(km - knee_km, 0)",
            "base_ms": model.base_ms,
            "near_ms_per_km": model.near_ms_per_km,
            "far_ms_per_km": model.far_ms_per_km,
            "knee_km": model.knee_km,
        },
        "fitted_on": PINGS,
        "method": "least absolute deviations (IRLS), knee chosen from 500/1000/1500/2000/3000 km"
        " by mean absolute error: python3 -m router.latency_fit; see docs/latency-model.md",
        "error": errors,
    }
    return (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode()


def build(data: Path) -> dict[str, bytes]:
    """Every shipped file, by name, as it would be written."""
    out = {
        EXTRACTS["aws"]: gz(compact_json(aws_inter_region(data).to_json())),
        EXTRACTS["azure"]: gz(compact_json(azure_inter_region(data).to_json())),
        EXTRACTS["places"]: gz(places_csv(data)),
        EXTRACTS["mooncake"]: gz(mooncake_jsonl(data)),
        FITTED_CONSTANTS.name: latency_model_json(data),
    }
    for name in ("conv", "code"):  # every column (TIMESTAMP, ContextTokens, GeneratedTokens)
        with open_trace(data, name) as f:
            out[EXTRACTS[name]] = gz(f.read().encode())
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="the full data directory")
    p.add_argument("--out", type=Path, default=DEFAULTS, help="where the extracts go")
    p.add_argument("--check", action="store_true", help="fail if a shipped file would change")
    args = p.parse_args(argv)
    data: Path = args.data or default_data_dir()
    if not (data / WONDERPROXY).is_dir():
        print(f"no full data set at {data}: pass --data or set MERIDIAN_DATA", file=sys.stderr)
        return 2
    files = build(data)
    out: Path = args.out
    if args.check:
        stale = [
            n for n, b in files.items() if not (out / n).is_file() or (out / n).read_bytes() != b
        ]
        for name in stale:
            print(f"{out / name} differs from a rebuild from {data}", file=sys.stderr)
        return 1 if stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        (out / name).write_bytes(raw)
        print(f"{out / name}: {len(raw):,} bytes")
    print(f"total {sum(map(len, files.values())):,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
