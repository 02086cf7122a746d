"""The autoscaling policy and the GPU budget on plain data."""

from __future__ import annotations

import itertools
import random

import pytest

from control_plane.autoscale.budget import Claim, allocate
from control_plane.autoscale.policy import (
    AutoscalePolicy,
    Limits,
    LoadSample,
    ScalerState,
    ScalingConfig,
)

CFG = ScalingConfig(
    target_concurrency=4.0, stable_window_s=60, panic_window_s=6, scale_down_delay_s=30
)


def run(
    policy: AutoscalePolicy,
    load: list[float],
    limits: Limits,
    start: int,
) -> list[int]:
    """One report per second with ``load[t]`` requests in flight; returns replicas per second."""
    samples: list[LoadSample] = []
    current, state = start, ScalerState()
    out = []
    for t, concurrency in enumerate(load):
        samples.append(LoadSample(at=float(t), in_flight=concurrency))
        decision, state = policy.decide(samples[-120:], current, limits, float(t), state)
        assert limits.min_replicas <= decision.desired <= limits.max_replicas
        current = decision.desired
        out.append(current)
    return out


def test_a_load_step_scales_up_within_the_panic_window_in_few_steps() -> None:
    policy = AutoscalePolicy(CFG)
    load = [4.0] * 120 + [40.0] * 60  # 1 worker's worth, then 10 workers' worth
    replicas = run(policy, load, Limits(1, 50), start=1)
    assert replicas[119] == 1
    after = replicas[120:]
    reached = next(i for i, r in enumerate(after) if r >= 9)
    assert reached <= CFG.panic_window_s  # the new capacity is asked for within the window
    ups = sum(1 for a, b in itertools.pairwise(after) if b > a)
    assert 1 <= ups <= int(CFG.panic_window_s) + 1  # a bounded number of steps
    assert max(after) <= 12  # no overshoot far past the demand


def test_oscillating_load_inside_the_band_does_not_flap() -> None:
    policy = AutoscalePolicy(CFG)
    rng = random.Random(7)
    # 4 workers' worth (16 in flight), wobbling by +-8% around it
    load = [16.0 * (1 + rng.uniform(-0.08, 0.08)) + (1.0 if t % 2 else -1.0) for t in range(600)]
    replicas = run(policy, load, Limits(1, 20), start=4)
    assert set(replicas) == {4}


def test_scale_down_waits_for_the_delay_and_steps_down_gradually() -> None:
    policy = AutoscalePolicy(CFG)
    load = [40.0] * 120 + [4.0] * 240
    replicas = run(policy, load, Limits(1, 20), start=10)
    assert replicas[119] == 10
    drop = replicas[120:]
    first_down = next(i for i, r in enumerate(drop) if r < 10)
    assert first_down >= CFG.scale_down_delay_s  # never faster than the delay
    steps = [a - b for a, b in itertools.pairwise(drop) if b < a]
    assert all(s <= 5 for s in steps)  # at most halving per decision
    assert drop[-1] == 1


def test_min_and_max_are_never_violated() -> None:
    policy = AutoscalePolicy(CFG)
    rng = random.Random(3)
    load = [rng.choice([0.0, 2.0, 50.0, 400.0]) for _ in range(400)]
    replicas = run(policy, load, Limits(2, 7), start=2)  # run() asserts the bounds each step
    assert max(replicas) == 7 and min(replicas) == 2


def test_scale_to_zero_after_idle_and_back_on_demand() -> None:
    policy = AutoscalePolicy(CFG)
    load = [4.0] * 30 + [0.0] * 200
    replicas = run(policy, load, Limits(0, 5), start=1)
    zero_at = replicas.index(0)
    assert zero_at >= 30 + CFG.scale_down_delay_s
    assert replicas[-1] == 0
    # a request held by the router for a model with no worker: activation at once
    samples = [LoadSample(at=float(t)) for t in range(200)] + [LoadSample(at=200.0, demand=1.0)]
    decision, _ = policy.decide(samples, 0, Limits(0, 5), 200.0, ScalerState())
    assert decision.desired == 1 and "activation" in decision.reason


def test_min_one_never_goes_to_zero() -> None:
    replicas = run(AutoscalePolicy(CFG), [0.0] * 300, Limits(1, 5), start=3)
    assert replicas[-1] == 1 and min(replicas) == 1


def test_no_reports_holds_the_current_count() -> None:
    decision, _ = AutoscalePolicy(CFG).decide([], 3, Limits(0, 5), 100.0)
    assert decision.desired == 3 and "no load reports" in decision.reason


def test_throughput_target_counts_when_higher() -> None:
    policy = AutoscalePolicy(ScalingConfig(target_concurrency=100.0, target_rps=10.0))
    assert policy.demand_of(LoadSample(at=0.0, in_flight=1.0, throughput_rps=55.0)) == 5.5


def test_generative_demand_counts_sequences_and_kv_occupancy() -> None:
    policy = AutoscalePolicy(ScalingConfig(target_seqs=10.0, target_kv_occupancy=0.8))
    # two workers, 30 sequences running and 10 waiting: four workers' worth
    seqs = LoadSample(
        at=0.0,
        in_flight=2,
        running_seqs=30,
        waiting_seqs=10,
        workers=2,
        kv_blocks_used=100,
        kv_blocks_total=1000,
    )
    assert policy.demand_of(seqs) == 4.0
    # few sequences but long contexts: 90% of the KV cache in use is 2.25 workers' worth
    kv = LoadSample(
        at=0.0, in_flight=2, running_seqs=4, workers=2, kv_blocks_used=900, kv_blocks_total=1000
    )
    assert policy.demand_of(kv) == 2.25
    # the same requests-in-flight figure without generative fields reads as half a worker
    assert policy.demand_of(LoadSample(at=0.0, in_flight=2)) == 0.5


def test_waiting_sequences_scale_a_generative_deployment_up() -> None:
    policy = AutoscalePolicy(CFG)
    samples = [
        LoadSample(
            at=float(t),
            in_flight=8,
            running_seqs=12,
            waiting_seqs=30,
            workers=1,
            kv_blocks_used=950,
            kv_blocks_total=1000,
        )
        for t in range(10)
    ]
    decision, _ = policy.decide(samples, 1, Limits(1, 8), 9.0)
    # by requests in flight (8 / 4) it would want 2; by sequences (42 / 12) it wants 4
    assert decision.desired == 4
    assert decision.panic


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="panic_window_s"):
        ScalingConfig(panic_window_s=100, stable_window_s=60)


# --- the global GPU budget ----------------------------------------------------------------


def test_everything_fits_everyone_gets_what_they_asked() -> None:
    claims = [Claim("a", "eu", "h100", 3, demand=3), Claim("b", "us", "h100", 2, demand=2)]
    result = allocate(claims, {"h100": 10})
    assert result.granted == {"a": 3, "b": 2} and result.limited == {}


def test_scarce_gpus_go_where_the_traffic_is_and_the_budget_holds() -> None:
    claims = [
        Claim("eu", "eu-west-1", "h100", desired=8, minimum=1, demand=8.0),
        Claim("us", "us-east-1", "h100", desired=6, minimum=1, demand=6.0),
        Claim("ap", "ap-south-1", "h100", desired=3, minimum=1, demand=1.5),
        Claim("cpu", "us-east-1", "cpu", desired=4, demand=4.0),
    ]
    result = allocate(claims, {"h100": 10})
    g = result.granted
    assert g["eu"] + g["us"] + g["ap"] == 10  # the whole budget, never more
    assert g["cpu"] == 4  # another type is not limited by this budget
    assert all(g[k] >= 1 for k in ("eu", "us", "ap"))  # minimums first
    assert g["ap"] == 1  # its second replica would carry half a worker: the others first
    assert g["eu"] > g["us"] >= 3  # the busiest gets most, without starving the second
    assert "budget" in result.limited["eu"] and "spills" in result.limited["eu"]


def test_region_gpus_cap_a_region_and_the_budget_never_overflows() -> None:
    rng = random.Random(11)
    for _ in range(200):
        claims = [
            Claim(i, rng.choice(["a", "b", "c"]), rng.choice(["x", "y"]), rng.randint(0, 9),
                  minimum=rng.randint(0, 2), demand=rng.uniform(0, 9),
                  gpus_per_replica=rng.choice([1, 2]))
            for i in range(8)
        ]  # fmt: skip
        budget = {"x": rng.randint(0, 12), "y": rng.randint(0, 12)}
        regions = {"a": rng.randint(0, 8), "b": rng.randint(0, 8)}
        g = allocate(claims, budget, regions).granted
        for kind, total in budget.items():
            assert sum(g[c.key] * c.gpus_per_replica for c in claims if c.gpu_type == kind) <= total
        for region, total in regions.items():
            assert sum(g[c.key] * c.gpus_per_replica for c in claims if c.region == region) <= total
        assert all(0 <= g[c.key] <= c.desired for c in claims)
