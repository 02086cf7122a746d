"""The health policy and the ledger on plain data (no sockets)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from control_plane.health.ledger import Change, HealthLedger
from control_plane.health.policy import GpuCondition, HealthConfig, HealthPolicy
from meridian.snapshot import HealthState


@dataclass
class Xid:
    code: int


@dataclass
class Gpu:
    index: int
    temperature_c: float = 50.0
    ecc_uncorrected: int = 0
    hung: bool = False
    xid_events: list[Xid] = field(default_factory=list)
    recent_xids: list[int] = field(default_factory=list)
    throttle_reasons: list[str] = field(default_factory=list)
    utilization: float = 50.0
    memory_used_bytes: int = 1
    memory_total_bytes: int = 2


@dataclass
class Worker:
    worker_id: str
    gpu_indices: list[int]
    ready: bool = True
    draining: bool = False
    endpoint: str = "http://127.0.0.1:1"
    grpc_endpoint: str = ""
    models: list[str] = field(default_factory=lambda: ["m:1"])
    queue_depth: int = 0
    in_flight: int = 0
    throughput_rps: float = 0.0
    capacity_rps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    error: str = ""
    # generative workers' figures
    running_seqs: int = 0
    waiting_seqs: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    prefix_hit_rate: float = 0.0


@dataclass
class Report:
    gpus: list[Gpu]
    workers: list[Worker]


POLICY = HealthPolicy(HealthConfig(report_interval_s=1.0, missed_heartbeats=3))


def assess(gpus: list[Gpu], workers: list[Worker], *, age: float = 0.1):  # type: ignore[no-untyped-def]
    return POLICY.assess_region(gpus, workers, last_report_at=100.0, now=100.0 + age)


def test_all_well_is_healthy() -> None:
    a = assess([Gpu(0), Gpu(1)], [Worker("a", [0]), Worker("b", [1])])
    assert a.state == HealthState.HEALTHY and a.reason == ""
    assert {w.state for w in a.workers.values()} == {HealthState.HEALTHY}
    assert a.healthy_gpus == 2


@pytest.mark.parametrize(
    ("gpu", "reason"),
    [
        (Gpu(1, xid_events=[Xid(79)]), "fatal XID 79"),
        (Gpu(1, recent_xids=[48]), "fatal XID 48"),
        (Gpu(1, ecc_uncorrected=2), "2 uncorrectable ECC errors"),
        (Gpu(1, hung=True), "not responding"),
    ],
)
def test_fatal_gpu_error_downs_its_workers_and_degrades_the_region(gpu: Gpu, reason: str) -> None:
    a = assess([Gpu(0), gpu], [Worker("a", [0]), Worker("b", [1])])
    assert a.state == HealthState.DEGRADED and reason in a.reason
    assert a.workers["a"].state == HealthState.HEALTHY
    assert a.workers["b"].state == HealthState.DOWN and reason in a.workers["b"].reason
    assert [g.condition for g in a.gpus] == [GpuCondition.OK, GpuCondition.FAILED]


def test_non_fatal_xid_is_ignored() -> None:
    a = assess([Gpu(0, xid_events=[Xid(13)], recent_xids=[31])], [Worker("a", [0])])
    assert a.state == HealthState.HEALTHY


def test_all_gpus_failed_is_down() -> None:
    a = assess([Gpu(0, hung=True), Gpu(1, recent_xids=[79])], [Worker("a", [0])])
    assert a.state == HealthState.DOWN and a.reason == "all GPUs failed"
    assert a.healthy_gpus == 0


def test_overheating_or_hw_throttle_impairs_without_taking_down() -> None:
    a = assess(
        [Gpu(0, temperature_c=95), Gpu(1, throttle_reasons=["hw_slowdown", "gpu_idle"])],
        [Worker("a", [0]), Worker("b", [1])],
    )
    assert a.state == HealthState.DEGRADED
    assert a.workers["a"].state == HealthState.DEGRADED and "overheating" in a.workers["a"].reason
    assert a.workers["b"].state == HealthState.DEGRADED and "hw_slowdown" in a.workers["b"].reason
    assert a.healthy_gpus == 2
    idle_only = assess([Gpu(0, throttle_reasons=["gpu_idle"])], [Worker("a", [0])])
    assert idle_only.state == HealthState.HEALTHY


def test_missed_heartbeats_take_the_region_down_after_three_intervals() -> None:
    gpus, workers = [Gpu(0)], [Worker("a", [0])]
    assert assess(gpus, workers, age=2.9).state == HealthState.HEALTHY
    late = assess(gpus, workers, age=3.1)
    assert late.state == HealthState.DOWN and "no report for 3.1s" in late.reason
    assert late.workers["a"].state == HealthState.DOWN


def test_unready_worker_is_down_and_region_degraded() -> None:
    a = assess([Gpu(0)], [Worker("a", [0], ready=False), Worker("b", [0])])
    assert a.workers["a"].state == HealthState.DOWN
    assert a.state == HealthState.DEGRADED and "worker a not ready" in a.reason


def test_a_workers_own_error_reaches_the_region_summary() -> None:
    ledger = HealthLedger(POLICY, replica="r1", on_change=lambda r, c: None, clock=Clock())
    token = object()
    ledger.register("eu", token=token, agent_id="a", agent_version="1", inventory=[])
    refused = "exited with 1: m:1 variant int8: relative error 0.3 exceeds the recorded tolerance"
    ledger.ingest("eu", token, Report([Gpu(0)], [Worker("a", [0], ready=False, error=refused)]))
    summary = ledger.summary("eu")
    assert summary is not None
    assert "not ready" in summary.workers[0].reason and refused in summary.workers[0].reason


def test_no_report_yet_is_down() -> None:
    a = POLICY.assess_region(None, (), last_report_at=None, now=5.0)
    assert a.state == HealthState.DOWN and "no report" in a.reason


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ledger_classifies_changes_and_applies_heartbeats() -> None:
    clock = Clock()
    changes: list[tuple[str, Change]] = []
    ledger = HealthLedger(
        POLICY, replica="r1", on_change=lambda r, c: changes.append((r, c)), clock=clock
    )
    token = object()
    ledger.register("eu", token=token, agent_id="a", agent_version="1", inventory=[])
    assert ledger.state("eu") == HealthState.DOWN
    good = Report([Gpu(0), Gpu(1)], [Worker("a", [0]), Worker("b", [1])])
    ledger.ingest("eu", token, good)
    assert ledger.state("eu") == HealthState.HEALTHY
    assert changes[-1] == ("eu", Change.STATE)

    clock.now += 1
    busier = Report([Gpu(0), Gpu(1)], [Worker("a", [0], queue_depth=9), Worker("b", [1])])
    ledger.ingest("eu", token, busier)
    assert changes[-1] == ("eu", Change.LOAD)  # only load moved
    summary = ledger.summary("eu")
    assert summary is not None and summary.workers[0].queue_depth == 9

    ledger.ingest("eu", object(), Report([Gpu(0, hung=True)], []))  # a stale stream's report
    assert ledger.state("eu") == HealthState.HEALTHY

    clock.now += 3.5
    ledger.tick()
    assert ledger.state("eu") == HealthState.DOWN and changes[-1] == ("eu", Change.STATE)

    ledger.disconnect("eu", token)
    ledger.tick()
    assert ledger.regions() == [] and changes[-1] == ("eu", Change.GONE)
    assert ledger.gpu_reports_ingested == 4


def test_a_draining_worker_gets_no_traffic_and_the_region_stays_healthy() -> None:
    a = assess([Gpu(0)], [Worker("a", [0], draining=True), Worker("b", [0])])
    assert a.workers["a"].state == HealthState.DRAINING and not a.workers["a"].state.routable
    assert a.workers["a"].reason == "scaling down"
    assert a.state == HealthState.HEALTHY
