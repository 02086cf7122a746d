"""The real data the simulator runs on, read by path from the shared data directory.

- regions: AWS region codes and city coordinates (oaustegard aws-regions.csv, from
  cloudping.co's region table), and the AWS inter-region p50 RTT matrix;
- clients: Natural Earth 50m populated places (public domain), weighted by ``pop_max``;
- requests: the Azure LLM inference trace 2023 (Patel et al., "Splitwise", ISCA 2024;
  CC-BY 4.0), ``conv`` or ``code``, or the Mooncake conversation trace (FAST'25).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt

from router.latency_fit import AWS, aws_region_coords, default_data_dir

__all__ = [
    "Places",
    "Regions",
    "Trace",
    "default_data_dir",
    "load_places",
    "load_regions",
    "load_trace",
]

FloatArray = npt.NDArray[np.float64]

NATURAL_EARTH = "places/martynafford_natural-earth-geojson/ne_50m_populated_places_simple.json"
AZURE_TRACE = "traces/Azure_AzurePublicDataset/AzureLLMInferenceTrace_{}.csv"
MOONCAKE = "traces/kvcache-ai_Mooncake/conversation_trace.jsonl"


@dataclass(frozen=True, slots=True)
class Regions:
    names: tuple[str, ...]
    cities: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    rtt_ms: FloatArray  # measured inter-region p50 RTT matrix (cloudping), NaN where unknown


@dataclass(frozen=True, slots=True)
class Places:
    names: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    population: FloatArray


@dataclass(frozen=True, slots=True)
class Trace:
    """Arrival offsets (s from the first request) and token counts of a real trace."""

    name: str
    offsets_s: FloatArray
    input_tokens: FloatArray
    output_tokens: FloatArray

    def rate_profile(self, bin_s: float = 10.0) -> FloatArray:
        """Requests per ``bin_s`` bin, normalised to mean 1: the trace's load shape."""
        bins = max(1, int(self.offsets_s[-1] // bin_s))  # whole bins only
        idx = (self.offsets_s // bin_s).astype(np.int64)
        counts = np.bincount(idx[idx < bins], minlength=bins)
        profile: FloatArray = counts.astype(np.float64) / counts.mean()
        return profile


def load_regions(data: Path) -> Regions:
    coords = aws_region_coords(data)
    with open(data / AWS / "aws-regions.csv", newline="") as f:
        cities = {r["code"]: r["city"] for r in csv.DictReader(f)}
    names = tuple(sorted(coords))
    matrix = json.loads((data / AWS / "aws-ping-p50-1y.json").read_text())["data"]
    rtt = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            v = matrix.get(a, {}).get(b)
            if v is not None:
                rtt[i, j] = float(v)
    return Regions(
        names=names,
        cities=tuple(cities[n] for n in names),
        lat=np.array([coords[n][0] for n in names]),
        lon=np.array([coords[n][1] for n in names]),
        rtt_ms=rtt,
    )


def load_places(data: Path) -> Places:
    features = json.loads((data / NATURAL_EARTH).read_text())["features"]
    rows = [f["properties"] for f in features if (f["properties"].get("pop_max") or 0) > 0]
    return Places(
        names=tuple(str(r["nameascii"]) for r in rows),
        lat=np.array([float(r["latitude"]) for r in rows]),
        lon=np.array([float(r["longitude"]) for r in rows]),
        population=np.array([float(r["pop_max"]) for r in rows]),
    )


def load_trace(data: Path, name: str = "conv") -> Trace:
    if name in ("conv", "code"):
        stamps, inp, out = [], [], []
        with open(data / AZURE_TRACE.format(name), newline="") as f:
            for row in csv.DictReader(f):
                # "2023-11-16 18:15:46.6805900": trim the 7th fractional digit for fromisoformat
                stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
                inp.append(float(row["ContextTokens"]))
                out.append(float(row["GeneratedTokens"]))
        t = np.array(stamps)
        return Trace(name, t - t.min(), np.array(inp), np.array(out))
    if name == "mooncake":
        ts, inp, out = [], [], []
        with open(data / MOONCAKE) as f:
            for line in f:
                rec = json.loads(line)
                ts.append(rec["timestamp"] / 1000.0)
                inp.append(float(rec["input_length"]))
                out.append(float(rec["output_length"]))
        order = np.argsort(ts, kind="stable")
        return Trace(name, np.array(ts)[order], np.array(inp)[order], np.array(out)[order])
    raise ValueError(f"unknown trace {name!r}: choose conv, code or mooncake")
