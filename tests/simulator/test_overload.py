"""Overload without collapse: admission at the router, goodput, and many routers acting
on stale snapshots of regions that misreport their capacity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meridian.cli import main as meridian_main
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.admission import ADMITTED, FULL, LATE, Admission, AdmissionConfig
from router.policies import MeridianPolicy, RouteRequest, RouterStats
from simulator.overload import (
    OverloadSetup,
    fleet_capacity_rps,
    offered_rate,
    run_overload,
    run_staleness,
)
from simulator.scenarios import World, build_fleet


@pytest.fixture(scope="module")
def world() -> World:
    return World.load()


def test_admission_refuses_late_and_full_and_lower_classes_first() -> None:
    """The router's own ``Admission``: per request (the router) and per slice (the
    simulator) by the same rules."""
    config = AdmissionConfig(
        interactive_max_load=2.0,
        batch_max_load=1.5,
        interactive_deadline_share=0.8,
        batch_deadline_share=0.5,
    )
    adm = Admission(config)

    def one(expected: float | None, deadline: float | None, c: int, load: float) -> int:
        d = adm.by_load(load, 0.1, "m", c)
        if d.verdict == "admit":
            d = adm.by_deadline(expected, deadline, c)
        return {"": ADMITTED, "deadline": LATE, "capacity": FULL}[d.reason]

    assert one(700.0, 1000.0, 0, 0.0) == ADMITTED
    assert one(700.0, 1000.0, 1, 0.0) == LATE  # the lower class gets less
    assert one(900.0, 1000.0, 0, 0.0) == LATE
    assert one(100.0, 1000.0, 0, 1.7) == ADMITTED
    assert one(100.0, 1000.0, 1, 1.7) == FULL
    assert one(100.0, 1000.0, 5, 1.7) == FULL  # past the table: the lowest class
    assert one(None, None, 0, float("nan")) == ADMITTED
    expected = np.array([700.0, 700.0, 100.0])
    batch = adm.decide_batch(expected, np.full(3, 1000.0), np.array([0, 1, 0]), 2.5)
    assert batch.tolist() == [FULL, FULL, FULL]
    batch = adm.decide_batch(expected, np.full(3, 1000.0), np.array([0, 1, 1]), 1.0)
    assert batch.tolist() == [ADMITTED, LATE, ADMITTED]
    for c, load in ((0, 1.7), (1, 1.7), (1, 1.0), (0, 2.0)):  # both paths agree
        for e in (100.0, 600.0, 900.0):
            got = adm.decide_batch(np.array([e]), np.array([1000.0]), np.array([c]), load)
            assert got.tolist() == [one(e, 1000.0, c, load)], (c, load, e)
    with pytest.raises(ValueError):
        AdmissionConfig(interactive_deadline_share=1.5)


def _snap(in_flight: int, queue: int, capacity: float = 100.0, routers: int = 0) -> RoutingSnapshot:
    worker = WorkerView("w", "", HealthState.HEALTHY, ("m:1",))
    regions = (
        RegionView("a", HealthState.HEALTHY, 50.0, 8.0, capacity_rps=capacity,
                   in_flight=in_flight, queue_depth=queue, workers=(worker,)),
        RegionView("b", HealthState.HEALTHY, 48.8, 2.3, capacity_rps=capacity,
                   workers=(worker,)),
    )  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=0.0, regions=regions, routers=routers)


def test_capacity_is_learned_from_what_a_queued_region_runs() -> None:
    """100 req/s x 50 ms reports 5 servers; a queue behind 3 running shows 3."""
    policy = MeridianPolicy(default_service_ms=50.0)
    stats = RouterStats()
    table = policy.table(_snap(in_flight=3, queue=4), "m")
    shape, _, _ = policy.queue_state(table, stats, now=0.0)
    assert shape.servers.tolist() == [3.0, 5.0]
    assert stats.learned_servers[stats.indices(("a",))[0]] == 3.0
    # the next snapshot of the same region, now idle, does not forget it
    table = policy.table(_snap(in_flight=0, queue=0), "m")
    assert policy.queue_state(table, stats, now=1.0)[0].servers.tolist() == [3.0, 5.0]


def test_a_router_scales_its_own_load_by_its_share_of_the_fleet() -> None:
    """This router has 2 requests in region a; the snapshot shows 8 there: it is one of
    about 4 routers, and what it sends afterwards counts 4 times."""
    policy = MeridianPolicy(default_service_ms=50.0)
    stats = RouterStats()
    stats.on_dispatch("a", 0.0)
    stats.on_dispatch("a", 0.0)
    stats.on_dispatch("b", 0.0)
    stats.on_dispatch("b", 0.0)
    table = policy.table(_snap(in_flight=4, queue=0, capacity=1000.0), "m")
    table.reported_load[:] = [8.0, 8.0]
    policy.queue_state(table, stats, now=0.0)
    assert stats.replica_scale == pytest.approx(4.0, rel=0.05)
    stats.on_dispatch("a", 0.0)  # one more since the snapshot
    _, load, _ = policy.queue_state(table, stats, now=0.0)
    assert load[0] == pytest.approx(8.0 + 4.0, rel=0.05)


def test_before_measuring_its_share_a_router_assumes_an_equal_one() -> None:
    """With none of its own requests out, a router cannot measure its share of the load;
    the snapshot counts 4 routers, so what it sends counts 4 times until it can."""
    policy = MeridianPolicy(default_service_ms=50.0)
    stats = RouterStats()
    table = policy.table(_snap(in_flight=0, queue=0, capacity=1000.0, routers=4), "m")
    policy.queue_state(table, stats, now=0.0)
    assert stats.replica_scale == 4.0 and not stats.scale_known
    stats.on_dispatch("a", 0.0)
    _, load, _ = policy.queue_state(table, stats, now=0.0)
    assert load[0] == pytest.approx(4.0, rel=0.05)
    # 2 + 2 of its own out when the next snapshot shows 4 + 4: it is one of 2, measured
    stats.on_dispatch("a", 0.0)
    for _ in range(2):
        stats.on_dispatch("b", 0.0)
    table = policy.table(_snap(in_flight=4, queue=0, capacity=1000.0, routers=4), "m")
    table.reported_load[:] = [4.0, 4.0]
    policy.queue_state(table, stats, now=0.0)
    assert stats.scale_known and stats.replica_scale == pytest.approx(2.0, rel=0.05)


def test_one_snapshot_is_observed_once_whatever_the_models() -> None:
    """Tables of two models on one snapshot must not reset what was sent since it."""
    worker = WorkerView("w", "", HealthState.HEALTHY, ("m:1", "n:1"))
    region = RegionView("a", HealthState.HEALTHY, 50.0, 8.0, capacity_rps=100.0, workers=(worker,))
    snap = RoutingSnapshot(version=1, generated_at=0.0, regions=(region,))
    policy = MeridianPolicy(default_service_ms=50.0)
    stats = RouterStats()
    policy.queue_state(policy.table(snap, "m"), stats, now=0.0)
    stats.on_dispatch("a", 0.0)
    policy.queue_state(policy.table(snap, "n"), stats, now=0.0)
    assert stats.since_snapshot(stats.indices(("a",))).tolist() == [1.0]


def test_spread_draws_among_near_best_regions_by_headroom() -> None:
    snap = _snap(in_flight=0, queue=0, capacity=1000.0)  # a: Frankfurt, b: Paris
    paris = RouteRequest("m", 48.86, 2.35)
    greedy = MeridianPolicy(default_service_ms=50.0)
    firsts = {greedy.rank(snap, RouterStats(), paris, 0.0)[0] for _ in range(50)}
    assert firsts == {"b"}
    spread = MeridianPolicy(default_service_ms=50.0, spread_ms=50.0, seed=3)
    picks = [spread.rank(snap, RouterStats(), paris, 0.0)[0] for _ in range(400)]
    assert 0.3 < picks.count("a") / len(picks) < 0.7  # equal headroom: about half each
    table = spread.table(snap, "m")
    rtt = table.rtt_matrix(np.array([48.86]), np.array([2.35])).repeat(10, axis=0)
    choice = np.concatenate(
        [spread.choose_batch(table, RouterStats(), rtt, 0.0) for _ in range(40)]
    )
    assert 0.3 < float(np.mean(choice == 0)) < 0.7


def test_offered_rate_averages_the_target_over_the_run(world: World) -> None:
    from simulator.workload import Workload

    rate = offered_rate(world, 1000.0, 5.0)
    w = Workload(world.places, world.trace, rate)
    mean = np.mean([w.rate_at(t) for t in np.arange(0.0, 5.0, 0.1)])
    assert mean == pytest.approx(1000.0, rel=1e-9)
    fleet = build_fleet(world, 1000.0, 80.0)
    assert fleet_capacity_rps(fleet, 80.0) == pytest.approx(fleet.gpus.sum() * 12.5)


SMALL = OverloadSetup(nominal_rps=1500.0, duration_s=5.0)


def test_admission_keeps_goodput_near_capacity_under_overload(world: World) -> None:
    runs = run_overload(world, SMALL, factors=(1.5, 2.5))
    for f, results in runs.items():
        m = results["meridian+admission"]
        good = m.goodput_rps()
        assert m.requests == m.completed + m.refused + m.failed, f
        assert good >= 0.9 * m.fleet_capacity_rps, f
        assert good >= 1.3 * results["nearest"].goodput_rps(), f
        assert good >= 1.3 * results["waterfall"].goodput_rps(), f
        assert m.latency.quantile(0.99) <= m.deadline_ms, f  # the admitted ones
        low, high = m.refused_by_class[1], m.refused_by_class[0]
        assert low > high, f  # the lower class is refused first
        # without admission every policy queues: p99 is past the deadline
        for name in ("nearest", "waterfall", "meridian"):
            assert results[name].refused == 0
            assert results[name].latency.quantile(0.99) > m.deadline_ms, (f, name)


def test_below_capacity_admission_refuses_almost_nothing(world: World) -> None:
    m = run_overload(world, SMALL, factors=(0.8,), policies=("meridian+admission",))[0.8]
    assert m["meridian+admission"].refused <= 0.01 * m["meridian+admission"].requests


def test_many_routers_on_stale_snapshots_do_not_herd(world: World) -> None:
    """16 routers, 5 s snapshots, half the regions reporting double their capacity:
    Meridian stays at least as good as nearest on requests within the deadline, where
    the same policy without the share scaling and learned capacity herds."""
    setup = OverloadSetup(nominal_rps=800.0, duration_s=10.0)
    rows = run_staleness(
        world,
        setup,
        routers=(16,),
        intervals=(),
        reports=(2.0,),
        factor=0.8,
        policies=("nearest", "meridian", "meridian-naive"),
        misreport_interval_s=5.0,
    )
    assert [(r.routers, r.interval_s, r.report) for r in rows] == [(16, 5.0, 2.0)]
    res = rows[0].results
    assert res["meridian"].within_share() >= res["nearest"].within_share()
    assert res["meridian"].within_share() > res["meridian-naive"].within_share() + 0.05


def test_routers_starting_together_on_stale_snapshots_admit_only_what_meets_the_deadline(
    world: World,
) -> None:
    """4 routers start at once on 5 s snapshots of an idle fleet offered its capacity:
    each knows from the snapshot that it is one of 4 before it can measure it, so what it
    admits in the first 5 s meets the deadline too (each counting only its own load, they
    used to admit 4 times too much until the next snapshot)."""
    setup = OverloadSetup(nominal_rps=1500.0, duration_s=6.0)
    rows = run_staleness(
        world, setup, routers=(4,), intervals=(5.0,), reports=(), factor=1.0,
        policies=("meridian+admission",),
    )  # fmt: skip
    m = rows[0].results["meridian+admission"]
    assert m.refused > 0 and m.completed > 0.5 * m.requests
    assert m.latency.quantile(0.99) <= m.deadline_ms


def test_cli_overload_prints_goodput_ratios_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MERIDIAN_DATA", raising=False)
    out = tmp_path / "sim"
    args = ["simulate", "--scenario", "overload", "--rate", "800", "--duration", "2"]
    assert meridian_main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| 2.5x | meridian+admission |" in text
    assert "overload.x1_5_goodput_over_nearest=" in text
    assert (out / "simulation-overload.json").is_file()
    assert (out / "overload.png").stat().st_size > 1000
