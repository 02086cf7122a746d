"""Routing policies on plain data: no sockets, no clocks."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import astuple

import numpy as np
import pytest

from meridian.snapshot import (
    DeploymentRoute,
    HealthState,
    RegionView,
    RoutingSnapshot,
    WorkerView,
)
from router.policies import (
    MeridianPolicy,
    NearestPolicy,
    OraclePolicy,
    RoundRobinPolicy,
    RouteRequest,
    RouterStats,
    RoutingPolicy,
    VersionPicker,
    WaterfallPolicy,
    expected_wait_ms,
    pick_worker,
)

PARIS = RouteRequest(model="resnet", lat=48.86, lon=2.35)
CITIES = {
    "eu-central-1": (50.11, 8.68),
    "us-east-1": (39.05, -77.49),
    "ap-northeast-1": (35.68, 139.65),
}


def region(
    name: str,
    *,
    state: HealthState = HealthState.HEALTHY,
    load: int = 0,
    capacity: float = 100.0,
    models: tuple[str, ...] = ("resnet:1",),
) -> RegionView:
    lat, lon = CITIES[name]
    worker = WorkerView(f"{name}-w0", "http://127.0.0.1:1", HealthState.HEALTHY, models)
    return RegionView(
        name=name, state=state, lat=lat, lon=lon, capacity_rps=capacity, in_flight=load,
        workers=(worker,),
    )  # fmt: skip


def snapshot(*regions: RegionView) -> RoutingSnapshot:
    return RoutingSnapshot(version=1, generated_at=0.0, regions=regions)


def all_policies() -> list[RoutingPolicy]:
    return [
        MeridianPolicy(),
        NearestPolicy(),
        WaterfallPolicy(),
        RoundRobinPolicy(),
        OraclePolicy(truth=lambda: np.zeros(3)),
    ]


def test_nearest_region_wins_at_low_load() -> None:
    snap = snapshot(*(region(n) for n in CITIES))
    ranked = MeridianPolicy().rank(snap, RouterStats(), PARIS, now=0.0)
    assert ranked == ["eu-central-1", "us-east-1", "ap-northeast-1"]


def test_saturated_region_spills_to_next_best() -> None:
    # 100 rps at 50 ms = 5 servers; 40 requests already there -> ~36 queued ahead.
    snap = snapshot(region("eu-central-1", load=40), region("us-east-1"), region("ap-northeast-1"))
    stats = RouterStats()
    assert MeridianPolicy().rank(snap, stats, PARIS, now=0.0)[0] == "us-east-1"
    assert NearestPolicy().rank(snap, stats, PARIS, now=0.0)[0] == "eu-central-1"


def test_spills_near_saturation_before_a_queue_forms() -> None:
    """4 of 5 servers busy, no queue: the offered rate decides, through the M/M/c charge."""
    snap = snapshot(region("eu-central-1", load=4), region("us-east-1"), region("ap-northeast-1"))
    policy = MeridianPolicy()

    def sent_and_answered(rps: float) -> RouterStats:
        stats = RouterStats()
        idx = stats.indices(("eu-central-1",))
        n = np.array([rps])
        stats.record_dispatches(idx, n, now=0.0)  # the last second's rate ...
        stats.record_results(idx, n, np.zeros(1), np.zeros(1), n * 50.0, now=0.0)  # ... all back
        return stats

    assert policy.rank(snap, sent_and_answered(50.0), PARIS, now=0.0)[0] == "eu-central-1"
    assert policy.rank(snap, sent_and_answered(99.0), PARIS, now=0.0)[0] == "us-east-1"


def test_queued_backlog_spills_even_at_a_modest_rate() -> None:
    snap = snapshot(region("eu-central-1", load=20), region("us-east-1"), region("ap-northeast-1"))
    assert MeridianPolicy().rank(snap, RouterStats(), PARIS, now=0.0)[0] == "us-east-1"


def test_expected_wait_grows_without_bound_near_saturation() -> None:
    cap = np.full(5, 1000.0)
    svc = np.full(5, 50.0)  # 50 servers
    waits = expected_wait_ms(np.array([10.0, 40.0, 49.0, 60.0, 200.0]), cap, svc)
    assert list(waits) == sorted(waits)
    assert waits[0] < 0.01
    assert waits[4] > 100.0  # 151 requests ahead at 1000 rps


@pytest.mark.parametrize("bad", [HealthState.DOWN, HealthState.DRAINING])
def test_down_and_draining_regions_are_never_chosen(bad: HealthState) -> None:
    snap = snapshot(
        region("eu-central-1", state=bad), region("us-east-1"), region("ap-northeast-1")
    )
    for policy in all_policies():
        stats = RouterStats()
        for _ in range(5):
            ranked = policy.rank(snap, stats, PARIS, now=0.0)
            assert "eu-central-1" not in ranked, policy.name
            assert len(ranked) == 2, policy.name
        table = policy.table(snap, "resnet")
        rtt = table.rtt_matrix(np.array([48.86, 50.0]), np.array([2.35, 8.0]))
        assert 0 not in policy.choose_batch(table, stats, rtt, now=0.0).tolist(), policy.name


def test_regions_not_serving_the_model_are_skipped() -> None:
    snap = snapshot(region("eu-central-1", models=("bert:1",)), region("us-east-1"))
    assert MeridianPolicy().rank(snap, RouterStats(), PARIS, now=0.0) == ["us-east-1"]


def test_open_circuit_ejects_a_region_until_it_expires() -> None:
    snap = snapshot(region("eu-central-1"), region("us-east-1"))
    stats = RouterStats()
    policy = MeridianPolicy()
    for _ in range(stats.config.circuit_errors):
        stats.on_error("eu-central-1", now=10.0)
    assert policy.rank(snap, stats, PARIS, now=10.5) == ["us-east-1"]
    later = 10.0 + stats.config.circuit_open_s + 0.1
    assert policy.rank(snap, stats, PARIS, now=later)[0] == "eu-central-1"


def test_retry_excludes_the_failed_region() -> None:
    snap = snapshot(*(region(n) for n in CITIES))
    retry = RouteRequest(model="resnet", lat=48.86, lon=2.35, exclude=("eu-central-1",))
    assert MeridianPolicy().rank(snap, RouterStats(), retry, now=0.0)[0] == "us-east-1"


def test_measured_rtt_overrides_the_model() -> None:
    snap = snapshot(*(region(n) for n in CITIES))
    req = RouteRequest(model="resnet", lat=48.86, lon=2.35, measured_rtt_ms={"eu-central-1": 500})
    assert NearestPolicy().rank(snap, RouterStats(), req, now=0.0)[0] == "us-east-1"


def test_observed_wait_corrects_an_optimistic_report() -> None:
    snap = snapshot(region("eu-central-1"), region("us-east-1"))
    stats = RouterStats()
    for _ in range(20):
        stats.on_success("eu-central-1", wait_ms=400.0, service_ms=50.0, now=1.0)
    assert MeridianPolicy().rank(snap, stats, PARIS, now=1.0)[0] == "us-east-1"
    # without fresh observations the correction fades and the near region comes back
    assert MeridianPolicy().rank(snap, stats, PARIS, now=30.0)[0] == "eu-central-1"


def test_waterfall_spills_only_past_capacity() -> None:
    snap = snapshot(region("eu-central-1"), region("us-east-1"))
    policy = WaterfallPolicy()
    stats = RouterStats()
    idx = stats.indices(("eu-central-1",))
    stats.record_dispatches(idx, np.array([90.0]), now=0.0)  # 90 rps of 100
    assert policy.rank(snap, stats, PARIS, now=0.0)[0] == "eu-central-1"
    stats.record_dispatches(idx, np.array([20.0]), now=0.0)  # 110 rps
    assert policy.rank(snap, stats, PARIS, now=0.0)[0] == "us-east-1"


def test_round_robin_visits_every_region_equally() -> None:
    snap = snapshot(*(region(n) for n in CITIES))
    policy = RoundRobinPolicy()
    firsts = Counter(policy.rank(snap, RouterStats(), PARIS, now=0.0)[0] for _ in range(30))
    assert set(firsts.values()) == {10}


def test_batch_decision_matches_single_decisions() -> None:
    snap = snapshot(region("eu-central-1", load=3), region("us-east-1"), region("ap-northeast-1"))
    lat = np.array([48.86, 40.7, 35.0, -33.9])
    lon = np.array([2.35, -74.0, 135.0, 151.2])
    for policy in (MeridianPolicy(), NearestPolicy(), WaterfallPolicy()):
        stats = RouterStats()
        table = policy.table(snap, "resnet")
        batch = policy.choose_batch(table, stats, table.rtt_matrix(lat, lon), now=0.0)
        single = [
            policy.rank(snap, stats, RouteRequest("resnet", float(a), float(b)), now=0.0)[0]
            for a, b in zip(lat, lon, strict=True)
        ]
        assert [table.names[i] for i in batch] == single, policy.name


def test_no_candidate_gives_empty_ranking_and_minus_one() -> None:
    snap = snapshot(region("eu-central-1", state=HealthState.DOWN))
    policy = MeridianPolicy()
    assert policy.rank(snap, RouterStats(), PARIS, now=0.0) == []
    table = policy.table(snap, "resnet")
    rtt = table.rtt_matrix(np.array([0.0]), np.array([0.0]))
    assert policy.choose_batch(table, RouterStats(), rtt, now=0.0).tolist() == [-1]


def test_power_of_two_picks_the_less_loaded_worker() -> None:
    workers = tuple(
        WorkerView(f"w{i}", "http://127.0.0.1:1", HealthState.HEALTHY, ("resnet:1",), queue_depth=q)
        for i, q in enumerate([0, 5, 9])
    )
    reg = RegionView("eu-central-1", HealthState.HEALTHY, 50.1, 8.7, workers=workers)
    rng = random.Random(7)
    picks = Counter(pick_worker(reg, "resnet", rng).worker_id for _ in range(3000))  # type: ignore[union-attr]
    assert picks["w2"] == 0  # the most loaded never wins a pair
    assert picks["w0"] > 1800  # wins both of its pairs: expected 2/3
    outstanding = {"w0": 20}
    picks2 = Counter(
        pick_worker(reg, "resnet", rng, outstanding).worker_id  # type: ignore[union-attr]
        for _ in range(300)
    )
    assert picks2["w0"] == 0


def test_power_of_two_skips_unhealthy_and_wrong_model_workers() -> None:
    workers = (
        WorkerView("down", "http://x", HealthState.DOWN, ("resnet:1",)),
        WorkerView("bert", "http://x", HealthState.HEALTHY, ("bert:1",)),
        WorkerView("ok", "http://x", HealthState.HEALTHY, ("resnet:2",), queue_depth=50),
    )
    reg = RegionView("r", HealthState.HEALTHY, 0, 0, workers=workers)
    rng = random.Random(1)
    assert {pick_worker(reg, "resnet", rng).worker_id for _ in range(50)} == {"ok"}  # type: ignore[union-attr]
    assert pick_worker(reg, "gpt", rng) is None


def test_version_weights_are_respected() -> None:
    snap = RoutingSnapshot(
        version=1,
        generated_at=0.0,
        deployments=(
            DeploymentRoute("resnet", "1", "eu-central-1", weight=0.9),
            DeploymentRoute("resnet", "2", "eu-central-1", weight=0.1),
            DeploymentRoute("resnet", "3", "eu-central-1", weight=0.0),
            DeploymentRoute("resnet", "9", "us-east-1", weight=1.0),
        ),
    )
    picker = VersionPicker(snap)
    rng = random.Random(3)
    n = 20_000
    counts = Counter(picker.pick("resnet", "eu-central-1", rng).version for _ in range(n))  # type: ignore[union-attr]
    assert counts["3"] == 0 and counts["9"] == 0
    # binomial sd = sqrt(n p (1-p)) = 42; allow 5 sd
    assert abs(counts["2"] - 0.1 * n) < 5 * 42
    assert picker.pick("resnet", "ap-northeast-1", rng) is None


def test_scalar_and_bulk_stats_updates_agree() -> None:
    scalar, bulk = RouterStats(), RouterStats()
    idx = bulk.indices(("a", "b"))
    for t in range(5):
        now = 0.1 * t
        scalar.on_dispatch("a", now, rtt_ms=30.0)
        bulk.record_dispatches(idx, np.array([1.0, 0.0]), now, np.array([30.0, 0.0]))
        scalar.on_success("a", wait_ms=4.0 * t, service_ms=50.0 + t, now=now)
        bulk.record_results(
            idx,
            np.array([1.0, 0.0]),
            np.zeros(2),
            np.array([4.0 * t, 0]),
            np.array([50.0 + t, 0]),
            now,
        )
    scalar.on_error("b", 1.0)
    bulk.record_results(idx, np.zeros(2), np.array([0.0, 1.0]), np.zeros(2), np.zeros(2), 1.0)
    for name in ("a", "b"):
        assert astuple(scalar.region(name, 1.0)) == pytest.approx(astuple(bulk.region(name, 1.0)))
    assert scalar.rtt_ms[0] == pytest.approx(bulk.rtt_ms[0])


def test_serving_workers_of_one_version() -> None:
    from router.policies import serving_workers

    def worker(wid: str, *models: str) -> WorkerView:
        return WorkerView(wid, f"http://127.0.0.1:1/{wid}", HealthState.HEALTHY, models)

    workers = (
        worker("a", "m:1"),
        worker("b", "m:2"),
        worker("c", "m:1", "m:2"),
        worker("d", "x:1"),
    )
    region = RegionView("r", HealthState.HEALTHY, 0.0, 0.0, workers=workers)
    assert [w.worker_id for w in serving_workers(region, "m")] == ["a", "b", "c"]
    assert [w.worker_id for w in serving_workers(region, "m", "2")] == ["b", "c"]
    assert serving_workers(region, "m", "3") == ()
