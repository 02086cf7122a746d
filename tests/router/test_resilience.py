from __future__ import annotations

from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot, WorkerView
from router.resilience import LastGoodView, RetryBudget


def test_retry_budget_bounds_retries_to_a_fraction_of_traffic() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, cap=1000.0, tokens=0.0)
    retries = 0
    for i in range(1000):
        now = i * 0.001
        budget.record_request(now)
        if budget.try_retry(now):
            retries += 1
    assert 95 <= retries <= 100


def test_retry_budget_refills_slowly_when_quiet() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, cap=5.0, tokens=0.0)
    assert not budget.try_retry(0.0)
    assert budget.try_retry(0.6)  # 1.2 tokens accrued
    assert not budget.try_retry(0.7)


# --- the last good view (a panic threshold per model) ------------------------------------------


def _snap(version: int, states: dict[str, HealthState], *, deployed: bool = True,
          workers: bool = True) -> RoutingSnapshot:  # fmt: skip
    regions = tuple(
        RegionView(
            name, state, 0.0, 0.0, capacity_rps=10.0,
            workers=(WorkerView(f"{name}-w", "http://127.0.0.1:1", HealthState.HEALTHY,
                                ("tiny:1",)),) if workers and state.routable else (),
        )
        for name, state in states.items()
    )  # fmt: skip
    deployments = tuple(DeploymentRoute("tiny", "1", name) for name in states) if deployed else ()
    return RoutingSnapshot(version, 0.0, regions, deployments)


UP, DOWN = HealthState.HEALTHY, HealthState.DOWN


def test_a_snapshot_with_every_region_of_a_model_down_is_not_believed() -> None:
    guard = LastGoodView()
    good = _snap(1, {"eu": UP, "us": UP})
    assert guard.view(good, "tiny") is good
    bad = _snap(2, {"eu": DOWN, "us": DOWN})  # a control plane back before its agents
    assert guard.view(bad, "tiny") is good
    assert guard.held == {"tiny"} and guard.panics == 1
    assert guard.view(bad, "tiny") is good and guard.panics == 1  # one verdict per snapshot
    partial = _snap(3, {"eu": DOWN, "us": UP})  # one region down is believed at once
    assert guard.view(partial, "tiny") is partial
    assert guard.held == set()
    assert guard.view(_snap(4, {"eu": DOWN, "us": DOWN}), "tiny") is partial  # the newest good


def test_operator_intent_and_unknown_models_are_believed() -> None:
    guard = LastGoodView()
    guard.view(_snap(1, {"eu": UP}), "tiny")
    drained = _snap(2, {"eu": HealthState.DRAINING})
    assert guard.view(drained, "tiny") is drained
    undeployed = _snap(3, {"eu": DOWN}, deployed=False)
    assert guard.view(undeployed, "tiny") is undeployed
    scaled_to_zero = _snap(4, {"eu": UP}, workers=False)  # the router holds for a cold start
    assert guard.view(scaled_to_zero, "tiny") is scaled_to_zero
    fresh = LastGoodView()  # nothing good seen yet: nothing to fall back on
    down = _snap(5, {"eu": DOWN})
    assert fresh.view(down, "tiny") is down and fresh.held == set()
    assert guard.panics == 0
