"""The data shipped with the simulator: what it holds, and that it equals the full files."""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from router.latency import FITTED
from router.latency_fit import FITTED_CONSTANTS, load_aws, load_azure, load_fitted
from simulator.data import default_data_dir, load_places, load_regions, load_trace
from simulator.scenarios import World, run_scenario, standard
from simulator.sources import DEFAULTS, EXTRACTS, TRACES

ROOT = Path(__file__).resolve().parents[2]


def full_data() -> Path:
    """The full public data set ($MERIDIAN_DATA or ../shared/data), where this machine has it."""
    data = default_data_dir()
    if not (data / "latency").is_dir():
        pytest.skip(f"the full data set is not at {data}: nothing to compare the extracts with")
    return data


def test_the_extracts_hold_every_source_whole() -> None:
    regions = load_regions()
    assert len(regions.names) == 32 and "us-east-1" in regions.names
    assert not np.isnan(regions.rtt_ms).any()  # the full 32 x 32 cloudping matrix
    assert (np.diag(regions.rtt_ms) < 10).all() and np.nanmax(regions.rtt_ms) > 300
    assert regions.cities[regions.names.index("us-east-1")] == "Ashburn"
    places = load_places()
    assert len(places.names) == 1248 and (places.population > 0).all()
    assert places.population.sum() == pytest.approx(1.5e9, rel=0.5)
    sizes = {"conv": (19_366, 3502), "code": (8_819, 3436), "mooncake": (12_031, 3537)}
    for name, (rows, seconds) in sizes.items():
        trace = load_trace(None, name)
        assert len(trace.offsets_s) == rows, name
        assert trace.offsets_s[-1] == pytest.approx(seconds, abs=1), name
        assert (np.diff(trace.offsets_s) >= 0).all() and (trace.input_tokens > 0).all(), name
    assert len(load_aws().km) == 32 * 31
    assert len(load_azure().km) == 2350


def test_the_extracts_are_small_licensed_and_packaged() -> None:
    shipped = sorted(p.name for p in DEFAULTS.iterdir())
    data_files = [*EXTRACTS.values(), FITTED_CONSTANTS.name]
    assert set(data_files) <= set(shipped)
    assert sum((DEFAULTS / n).stat().st_size for n in data_files) < 3_000_000
    notice = (DEFAULTS / "NOTICE").read_text()
    for name in data_files:
        assert name in notice, name
    assert "Splitwise: Efficient Generative LLM Inference" in notice and "CC BY 4.0" in notice
    assert "Copyright (c) 2026 Ludovic Rivallain" in notice  # MIT: the notice travels along
    assert "Apache License" in (DEFAULTS / "LICENSE-Apache-2.0").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["simulator"]
    for name in shipped:  # an installed package carries every file, not only a checkout
        assert any(fnmatch.fnmatch(f"defaults/{name}", g) for g in globs), name


def test_the_shipped_latency_constants_are_the_routers() -> None:
    assert load_fitted() == FITTED
    record = json.loads(FITTED_CONSTANTS.read_text())
    assert record["fitted_on"]["repository"] == "sm86/geo-latency-data"
    assert "not shipped" in record["fitted_on"]["licence"]
    held_out = {e["data"]: e for e in record["error"] if e["role"] == "held out"}
    # the recorded held-out error is what the shipped matrices give today
    for pairs in (load_aws(), load_azure()):
        assert held_out[pairs.name]["pairs"] == len(pairs.km)
        mae = float(np.abs(FITTED.rtt_ms_array(pairs.km) - pairs.rtt_ms).mean())
        assert mae == pytest.approx(held_out[pairs.name]["mae_ms"], abs=0.01)


def test_the_extracts_equal_the_full_files() -> None:
    data = full_data()
    full, shipped = load_regions(data), load_regions()
    assert full.names == shipped.names and full.cities == shipped.cities
    for field in ("lat", "lon", "rtt_ms"):
        assert np.array_equal(getattr(full, field), getattr(shipped, field), equal_nan=True)
    full_places, shipped_places = load_places(data), load_places()
    assert full_places.names == shipped_places.names
    for field in ("lat", "lon", "population"):
        assert np.array_equal(getattr(full_places, field), getattr(shipped_places, field))
    for name in TRACES:
        a, b = load_trace(data, name), load_trace(None, name)
        for field in ("offsets_s", "input_tokens", "output_tokens"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (name, field)
    for load in (load_aws, load_azure):
        a, b = load(data), load()
        assert np.array_equal(a.km, b.km) and np.array_equal(a.rtt_ms, b.rtt_ms), a.name
    # and so a simulation gives the same figures from either
    scenario = standard("burst", rate_rps=2000.0, duration_s=2.0)
    runs = [
        run_scenario(World.load(source), scenario, ["nearest", "meridian"])
        for source in (data, None)
    ]
    for name in ("nearest", "meridian"):
        a, b = (
            {k: v for k, v in run[name].summary().items() if k != "sim_requests_per_wall_s"}
            for run in runs
        )
        assert a == b, name


def test_a_rebuild_from_the_full_files_gives_the_shipped_bytes() -> None:
    data = full_data()
    script = ROOT / "scripts" / "build_sim_data.py"
    done = subprocess.run(
        [sys.executable, str(script), "--data", str(data), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
