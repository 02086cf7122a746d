"""The autoscaler over routing snapshots: windows, demand, pins, budget, time to capacity."""

from __future__ import annotations

from control_plane.autoscale.controller import Autoscaler, DeploymentTarget
from control_plane.autoscale.policy import AutoscalePolicy, ScalingConfig
from control_plane.fleet.service import region_gpu_caps
from control_plane.health.summary import GpuSummary, RegionSummary
from meridian.snapshot import (
    DeploymentRoute,
    HealthState,
    RegionView,
    RoutingSnapshot,
    WorkerView,
)

CFG = ScalingConfig(target_concurrency=2.0, stable_window_s=20, panic_window_s=4,
                    scale_down_delay_s=10)  # fmt: skip


def snapshot(version: int, workers: dict[str, list[int]]) -> RoutingSnapshot:
    """``workers``: region -> in-flight per ready worker of ``m:1``."""
    regions = tuple(
        RegionView(
            name=name,
            state=HealthState.HEALTHY,
            lat=0.0,
            lon=0.0,
            workers=tuple(
                WorkerView(
                    f"{name}-{i}",
                    f"http://127.0.0.1:{9000 + i}",
                    HealthState.HEALTHY,
                    ("m:1",),
                    in_flight=load,
                )
                for i, load in enumerate(loads)
            ),
        )
        for name, loads in workers.items()
    )
    deps = tuple(DeploymentRoute("m", "1", name) for name in workers)
    return RoutingSnapshot(version=version, generated_at=0.0, regions=regions, deployments=deps)


def targets(pinned: bool = False, pinned_replicas: int | None = None) -> list[DeploymentTarget]:
    eu = DeploymentTarget(1, "m", "1", "eu", 0, 8, "h100", pinned, pinned_replicas)
    us = DeploymentTarget(2, "m", "1", "us", 0, 8, gpu_type="h100")
    return [eu, us]


def test_load_on_one_region_scales_it_and_measures_time_to_capacity() -> None:
    scaler = Autoscaler(AutoscalePolicy(CFG))
    t = 0.0
    for _ in range(10):  # one worker each, lightly loaded
        scaler.observe(snapshot(1, {"eu": [1], "us": [1]}), t)
        desired = scaler.decide(targets(), t)
        t += 1
    assert desired == {1: 1, 2: 1}
    for _ in range(3):  # eu: 12 in flight on one worker = 6 workers' worth
        scaler.observe(snapshot(2, {"eu": [12], "us": [1]}), t)
        desired = scaler.decide(targets(), t)
        t += 1
    assert desired[1] >= 3 and desired[2] == 1
    status = scaler.status(1)
    assert status is not None and status.last is not None and status.last.panic
    assert status.decisions and "panic" in status.decisions[-1].reason
    # the new workers become ready two seconds later
    want = desired[1]
    scaler.observe(snapshot(3, {"eu": [2] * want, "us": [1]}), t + 2)
    status = scaler.status(1)
    assert status is not None and status.ready == want
    assert status.ready_after_s and 0 < status.ready_after_s[-1] <= 5


def test_demand_for_a_model_at_zero_activates_the_hinted_region_and_times_the_cold_start() -> None:
    scaler = Autoscaler(AutoscalePolicy(CFG))
    for t in range(5):
        scaler.observe(snapshot(1, {"eu": [], "us": []}), float(t))
        assert scaler.decide(targets(), float(t)) == {1: 0, 2: 0}
    scaler.note_demand("m", "us", 5.0)
    scaler.note_demand("other-model", None, 5.0)  # nobody deploys it: ignored
    assert scaler.decide(targets(), 5.0) == {1: 0, 2: 1}
    scaler.observe(snapshot(2, {"eu": [], "us": [1]}), 7.5)
    status = scaler.status(2)
    assert status is not None and status.cold_starts_s == (2.5,)
    assert status.decisions[-1].reason.startswith("activation")


def test_a_pinned_deployment_is_not_autoscaled() -> None:
    scaler = Autoscaler(AutoscalePolicy(CFG))
    for t in range(6):
        scaler.observe(snapshot(1, {"eu": [20], "us": [0]}), float(t))
        desired = scaler.decide(targets(pinned=True, pinned_replicas=2), float(t))
    assert desired[1] == 2
    status = scaler.status(1)
    assert status is not None and status.pinned and status.desired == 2
    assert status.last is not None and "pinned" in status.last.reason


def test_the_gpu_budget_caps_the_sum_and_says_why() -> None:
    scaler = Autoscaler(AutoscalePolicy(CFG), gpu_budget={"h100": 5})
    for t in range(6):
        scaler.observe(snapshot(1, {"eu": [40], "us": [16]}), float(t))
        desired = scaler.decide(targets(), float(t))
        assert sum(desired.values()) <= 5
    assert desired[1] > desired[2] >= 1
    status = scaler.status(1)
    assert status is not None and status.last is not None
    assert "budget" in status.last.reason


def test_a_deleted_deployment_is_forgotten() -> None:
    scaler = Autoscaler(AutoscalePolicy(CFG))
    scaler.observe(snapshot(1, {"eu": [1], "us": [1]}), 0.0)
    scaler.decide(targets(), 0.0)
    assert scaler.status(1) is not None
    scaler.decide(targets()[1:], 1.0)
    assert scaler.status(1) is None and scaler.desired("m", "1", "eu") is None
    assert scaler.status(2) is not None


def test_a_region_gets_no_more_replicas_than_it_has_healthy_gpus() -> None:
    gpus = (GpuSummary(0, "ok"), GpuSummary(1, "ok"), GpuSummary(2, "failed"))
    summaries = {
        "eu": RegionSummary("eu", "r1", HealthState.DEGRADED, gpus=gpus),
        "us": RegionSummary("us", "r1", HealthState.HEALTHY),  # reports no GPUs: not capped
    }
    caps = region_gpu_caps(summaries)
    assert caps == {"eu": 2}
    scaler = Autoscaler(AutoscalePolicy(CFG))
    for t in range(6):
        scaler.observe(snapshot(1, {"eu": [40], "us": [40]}), float(t))
        desired = scaler.decide(targets(), float(t), caps)
    assert desired[1] == 2 and desired[2] > 2
    status = scaler.status(1)
    assert status is not None and status.last is not None
    assert "region eu has no free GPU" in status.last.reason
