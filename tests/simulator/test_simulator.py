"""The fleet simulator against queueing theory and against its own promises."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import router.policies as router_policies
from meridian.cli import main as meridian_main
from router.policies import MeridianPolicy, StatsConfig
from simulator.data import Places, Trace
from simulator.engine import FleetEvent, FleetSpec, SimConfig, Simulation
from simulator.metrics import PolicyResult
from simulator.scenarios import POLICIES, Scenario, World, make_policy, run_scenario, standard
from simulator.workload import CostModel, Workload


def erlang_c_wait_ms(c: int, rho: float, service_ms: float) -> float:
    a = c * rho
    terms = sum(a**k / math.factorial(k) for k in range(c))
    last = a**c / math.factorial(c) / (1 - rho)
    return last / (terms + last) * service_ms / (c * (1 - rho))


def exponential_world(n: int, mean_service_ms: float, seed: int) -> tuple[Places, Trace, CostModel]:
    """One client city at (0, 0); a flat arrival profile; exponential service times."""
    rng = np.random.default_rng(seed)
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    trace = Trace(
        "exponential",
        np.linspace(0.0, 3600.0, n),
        np.zeros(n),
        rng.exponential(mean_service_ms, n),
    )
    cost = CostModel(overhead_ms=0.0, prefill_ms_per_token=0.0, decode_ms_per_token=1.0)
    return places, trace, cost


def single_region(gpus: int) -> FleetSpec:
    return FleetSpec(("solo",), np.zeros(1), np.zeros(1), np.array([gpus]))


def run_one(policy_name: str, fleet: FleetSpec, workload: Workload, cfg: SimConfig) -> PolicyResult:
    holder: list[Simulation] = []
    policy = make_policy(policy_name, lambda: holder[0].free0, workload.mean_service_ms)
    sim = Simulation(policy, fleet, workload, cfg)
    holder.append(sim)
    return sim.run()


def test_mmc_region_matches_erlang_c() -> None:
    c, service, rho = 10, 50.0, 0.8
    places, trace, cost = exponential_world(200_000, service, seed=5)
    rate = rho * c * 1000.0 / service  # 160 requests/s
    workload = Workload(places, trace, rate, cost=cost, seed=9)
    cfg = SimConfig(duration_s=400.0, dt_ms=50.0)
    res = run_one("nearest", single_region(c), workload, cfg)
    measured = res.wait_ms_total / res.completed
    expected = erlang_c_wait_ms(c, rho, service)  # 10.2 ms
    assert res.completed > 60_000
    assert measured == pytest.approx(expected, rel=0.15)


def test_every_policy_agrees_when_there_is_one_region() -> None:
    places, trace, cost = exponential_world(50_000, 40.0, seed=2)
    cfg = SimConfig(duration_s=5.0)
    summaries = []
    for name in POLICIES:
        workload = Workload(places, trace, 400.0, cost=cost, seed=3)
        summaries.append(run_one(name, single_region(20), workload, cfg).summary())
    first = summaries[0]
    for s in summaries[1:]:
        for key in ("requests", "completed", "mean_ms", "p99_ms", "mean_queue_wait_ms"):
            assert s[key] == first[key], (s["policy"], key)


@pytest.fixture(scope="module")
def world() -> World:
    return World.load()  # the extracts shipped with the simulator (test_data.py: = the full files)


def test_the_oracle_is_never_beaten_on_the_mean(world: World) -> None:
    scenario = standard("burst", rate_rps=4000.0, duration_s=4.0)
    results = run_scenario(world, scenario)
    oracle = results["oracle"].latency.mean()
    assert len({r.requests for r in results.values()}) == 1  # the same arrivals for everyone
    for name, r in results.items():
        # greedy per-request optimum: others may tie it, within 1%
        assert oracle <= r.latency.mean() * 1.01, name


def test_failed_region_gets_no_traffic_after_detection(world: World) -> None:
    """Circuit breaker off: only the health plane's detection takes the region out."""
    fail_at, until, detection = 2.0, 6.0, 1.0
    scenario = Scenario(
        "fail",
        "us-east-1 down",
        rate_rps=3000.0,
        duration_s=10.0,
        events=(FleetEvent("fail", "us-east-1", at_s=fail_at, until_s=until),),
    )
    cfg = SimConfig(detection_s=detection, stats=StatsConfig(circuit_errors=10**9))
    res = run_scenario(world, scenario, ["nearest", "meridian"], config=cfg)
    for name, r in res.items():
        col = r.timeline[:, r.regions.index("us-east-1")]
        assert col[int(fail_at)] > 0, name  # still sent traffic before detection
        # whole seconds after detection until recovery + detection: nothing
        assert col[int(fail_at + detection) + 1 : int(until)].sum() == 0, name
        assert col[int(until + detection) + 1 :].sum() > 0, name  # back after recovery
        assert r.retried > 0 and r.failed == 0, name  # every failed attempt was retried


def test_circuit_breaker_ejects_the_region_before_the_health_plane(world: World) -> None:
    scenario = Scenario(
        "fail",
        "us-east-1 down",
        rate_rps=3000.0,
        duration_s=4.0,
        events=(FleetEvent("fail", "us-east-1", at_s=1.0, until_s=4.0),),
    )
    slow_health = SimConfig(detection_s=30.0)
    r = run_scenario(world, scenario, ["meridian"], config=slow_health)["meridian"]
    col = r.timeline[:, r.regions.index("us-east-1")]
    assert col[2:4].sum() == 0  # the router's own errors opened the circuit within a second
    assert r.failed == 0


def test_the_simulator_drives_the_routers_policy_object(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_policy("meridian", lambda: np.zeros(1), 50.0).__class__ is MeridianPolicy
    assert MeridianPolicy.__module__ == "router.policies.meridian"
    calls = []
    original = router_policies.MeridianPolicy.region_terms

    def spy(self: MeridianPolicy, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(router_policies.MeridianPolicy, "region_terms", spy)
    places, trace, cost = exponential_world(10_000, 40.0, seed=1)
    workload = Workload(places, trace, 200.0, cost=cost, seed=1)
    res = run_one("meridian", single_region(8), workload, SimConfig(duration_s=1.0))
    assert res.completed > 0 and len(calls) > 0


def test_meridian_beats_the_baselines_under_a_burst(world: World) -> None:
    scenario = standard("burst", rate_rps=8000.0, duration_s=5.0)
    results = run_scenario(world, scenario, ["nearest", "waterfall", "meridian"])
    p99 = {n: r.latency.quantile(0.99) for n, r in results.items()}
    assert p99["meridian"] <= 0.7 * p99["nearest"]
    assert p99["meridian"] <= 0.85 * p99["waterfall"]


def test_cli_writes_tables_json_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MERIDIAN_DATA", raising=False)  # no data argument: the shipped extracts
    out = tmp_path / "sim"
    args = ["simulate", "--scenario", "steady", "--rate", "2000", "--duration", "2"]
    args += ["--policies", "nearest,meridian", "--out", str(out)]
    assert meridian_main(args) == 0
    text = capsys.readouterr().out
    assert "| meridian |" in text and "| nearest |" in text
    assert "data: shipped extracts" in text
    assert (out / "simulation.json").is_file()
    assert (out / "steady-cdf.png").stat().st_size > 1000
    assert (out / "steady-map.png").stat().st_size > 1000


def test_cli_rejects_an_unknown_policy(tmp_path: Path) -> None:
    args = ["simulate", "--policies", "fastest", "--out", str(tmp_path)]
    assert meridian_main(args) == 2


def test_cli_rejects_a_data_directory_without_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["simulate", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "sim")]
    assert meridian_main(args) == 2
    assert "no data directory at" in capsys.readouterr().err


def test_config_is_plain_data() -> None:
    cfg = replace(SimConfig(), duration_s=1.0)
    assert cfg.duration_s == 1.0 and cfg.detection_s == 1.0
