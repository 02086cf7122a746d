"""The real data the simulator runs on: the extracts shipped in ``simulator/defaults/``
or, given a directory, the full files (``simulator.sources`` reads both the same way).

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

from router.latency_fit import default_data_dir
from simulator.sources import aws_inter_region, configured_data_dir, open_trace, places

__all__ = [
    "Places",
    "Regions",
    "Trace",
    "configured_data_dir",
    "default_data_dir",
    "load_places",
    "load_regions",
    "load_trace",
]

FloatArray = npt.NDArray[np.float64]


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


def load_regions(data: Path | None = None) -> Regions:
    """The AWS regions and their measured RTT matrix; ``data=None``: the shipped extract."""
    aws = aws_inter_region(data)
    names = tuple(sorted(aws.coords))
    rtt = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            v = aws.rtt_ms.get(a, {}).get(b)
            if v is not None:
                rtt[i, j] = v
    return Regions(
        names=names,
        cities=tuple(aws.cities[n] for n in names),
        lat=np.array([aws.coords[n][0] for n in names]),
        lon=np.array([aws.coords[n][1] for n in names]),
        rtt_ms=rtt,
    )


def load_places(data: Path | None = None) -> Places:
    rows = places(data)
    return Places(
        names=tuple(p.name for p in rows),
        lat=np.array([p.lat for p in rows]),
        lon=np.array([p.lon for p in rows]),
        population=np.array([p.population for p in rows]),
    )


def load_trace(data: Path | None = None, name: str = "conv") -> Trace:
    with open_trace(data, name) as f:
        if name == "mooncake":
            ts, inp, out = [], [], []
            for line in f:
                rec = json.loads(line)
                ts.append(rec["timestamp"] / 1000.0)
                inp.append(float(rec["input_length"]))
                out.append(float(rec["output_length"]))
            order = np.argsort(ts, kind="stable")
            return Trace(name, np.array(ts)[order], np.array(inp)[order], np.array(out)[order])
        stamps, inp, out = [], [], []
        for row in csv.DictReader(f):
            # "2023-11-16 18:15:46.6805900": trim the 7th fractional digit for fromisoformat
            stamps.append(datetime.fromisoformat(row["TIMESTAMP"][:26]).timestamp())
            inp.append(float(row["ContextTokens"]))
            out.append(float(row["GeneratedTokens"]))
        t = np.array(stamps)
        return Trace(name, t - t.min(), np.array(inp), np.array(out))
