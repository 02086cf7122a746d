"""Slow and vanished workers, judged from the router's own observations: plain data, no sockets.

The fleet here is three regions seen from Paris; requests arrive at 100/s and each
answer comes back after the region's latency. The loop does what ``RouterCore`` does
with an answer: the unexplained part of its time (``excess``: no network, the
workers report 0 ms) goes into the region's wait EWMA and the worker's outlier
record, and due probes of slow workers are answered as a shadow copy would be.
"""

from __future__ import annotations

import heapq
from collections import Counter

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.outliers import OutlierConfig, WorkerOutliers
from router.policies import MeridianPolicy, RouteRequest, RouterStats, choose_worker

PARIS = RouteRequest(model="resnet", lat=48.86, lon=2.35)
CITIES = {
    "eu-central-1": (50.11, 8.68),
    "us-east-1": (39.05, -77.49),
    "ap-northeast-1": (35.68, 139.65),
}
FAST_MS = 5.0
SLOW_MS = 305.0  # 300 ms slower than reported


def _snapshot(workers_per_region: int = 1) -> RoutingSnapshot:
    regions = tuple(
        RegionView(
            name=name, state=HealthState.HEALTHY, lat=lat, lon=lon, capacity_rps=1000.0,
            workers=tuple(
                WorkerView(f"{name}-w{i}", "http://127.0.0.1:1", HealthState.HEALTHY,
                           ("resnet:1",))
                for i in range(workers_per_region)
            ),
        )
        for name, (lat, lon) in CITIES.items()
    )  # fmt: skip
    return RoutingSnapshot(version=1, generated_at=0.0, regions=regions)


def _simulate(slow_from: float, slow_until: float, end: float) -> list[tuple[float, str]]:
    """(time, region) of every request Paris sends at 100/s; eu-central-1 answers 300 ms
    slow between ``slow_from`` and ``slow_until``."""
    import random

    snap = _snapshot()
    policy = MeridianPolicy()
    stats = RouterStats()
    outliers = WorkerOutliers()
    rng = random.Random(1)
    workers = {r.name: r.workers for r in snap.regions}

    def latency(region: str, t: float) -> float:
        slow = region == "eu-central-1" and slow_from <= t < slow_until
        return SLOW_MS if slow else FAST_MS

    # events: (time, seq, kind, region, worker id)
    events: list[tuple[float, int, str, str, str]] = []
    seq = 0
    sent: list[tuple[float, str]] = []
    t = 0.0
    while t < end:
        while events and events[0][0] <= t:
            done, _, kind, region, worker_id = heapq.heappop(events)
            excess = latency(region, done - 0.001)  # the worker reports 0 ms for itself
            outliers.observe(worker_id, excess, done)
            if kind == "answer":
                stats.on_success(region, excess, excess, done)
            elif stats.region(region, done).wait_ms > outliers.config.slow_ms:
                stats.observe_wait(region, excess, done)  # a shadow probe's answer
            for due in outliers.probes_due(done):
                owner = due.rsplit("-w", 1)[0]
                seq += 1
                arrive = done + latency(owner, done) / 1000.0
                heapq.heappush(events, (arrive, seq, "probe", owner, due))
        region = policy.rank(snap, stats, PARIS, t)[0]
        worker = choose_worker(outliers.usable(workers[region], t), rng)
        assert worker is not None
        stats.on_dispatch(region, t)
        seq += 1
        heapq.heappush(events, (t + latency(region, t) / 1000.0, seq, "answer", region,
                                worker.worker_id))  # fmt: skip
        sent.append((t, region))
        t = round(t + 0.01, 6)
    return sent


def _share(sent: list[tuple[float, str]], region: str, start: float, stop: float) -> float:
    window = [r for t, r in sent if start <= t < stop]
    return Counter(window)[region] / len(window)


def test_a_slow_region_loses_its_traffic_within_5_s_and_regains_it() -> None:
    sent = _simulate(slow_from=2.0, slow_until=12.0, end=20.0)
    before = _share(sent, "eu-central-1", 1.0, 2.0)
    assert before == 1.0  # nearest, and idle: all of Paris goes there
    # from 1 s after the slowdown on, and in the 5th second, far less than 20% of before
    assert _share(sent, "eu-central-1", 3.0, 7.0) <= 0.2 * before
    assert _share(sent, "eu-central-1", 6.0, 7.0) <= 0.05 * before
    moved = Counter(r for t, r in sent if 3.0 <= t < 12.0)
    assert moved.most_common(1)[0][0] == "us-east-1"  # the next best, not the farthest
    # the shadow probes see the recovery: traffic is back within 3 s
    assert _share(sent, "eu-central-1", 15.0, 20.0) >= 0.95


def test_a_slow_worker_is_passed_over_inside_its_region_while_few() -> None:
    outliers = WorkerOutliers(OutlierConfig(slow_ms=100.0))
    region = _snapshot(workers_per_region=3).regions[0]
    a, b, c = region.workers
    for t in range(5):
        outliers.observe(a.worker_id, 300.0, now=float(t))
        outliers.observe(b.worker_id, 2.0, now=float(t))
        outliers.observe(c.worker_id, 1.0, now=float(t))
    assert outliers.is_slow(a.worker_id, 5.0)
    assert [w.worker_id for w in outliers.usable(region.workers, 5.0)] == [b.worker_id, c.worker_id]
    # two of three slow: more than half; the region as a whole is slow, keep them all
    for t in range(5, 10):
        outliers.observe(b.worker_id, 300.0, now=float(t))
    assert len(outliers.usable(region.workers, 10.0)) == 3
    # quick again: readmitted once the EWMA is well below the line (hysteresis)
    for t in range(10, 20):
        outliers.observe(a.worker_id, 0.0, now=float(t))
    assert not outliers.is_slow(a.worker_id, 20.0)
    # a verdict nobody refreshed is dropped
    assert outliers.is_slow(b.worker_id, 20.0)
    assert not outliers.is_slow(b.worker_id, 9.0 + outliers.config.forget_s + 1.0)


def test_probes_are_due_once_per_interval_per_outlier() -> None:
    outliers = WorkerOutliers(OutlierConfig(probe_interval_s=0.25))
    assert outliers.probes_due(0.0) == []
    outliers.observe("slow", 500.0, now=0.0)
    outliers.eject("gone", "http://127.0.0.1:9")
    assert sorted(outliers.probes_due(0.0)) == ["gone", "slow"]
    assert outliers.probes_due(0.1) == []
    assert sorted(outliers.probes_due(0.3)) == ["gone", "slow"]
    outliers.readmit("gone")
    assert outliers.probes_due(0.6) == ["slow"]
    outliers.forget_except({"other"})
    assert outliers.quiet


def test_a_refused_worker_is_ejected_at_once_and_its_region_when_none_is_left() -> None:
    """What ``RouterCore`` does on a connect failure, on plain data."""
    snap = _snapshot(workers_per_region=2)
    stats, outliers, policy = RouterStats(), WorkerOutliers(), MeridianPolicy()
    eu = snap.regions[0]
    assert outliers.eject(eu.workers[0].worker_id, eu.workers[0].endpoint)
    assert not outliers.eject(eu.workers[0].worker_id, eu.workers[0].endpoint)  # once
    assert [w.worker_id for w in outliers.usable(eu.workers, 0.0)] == [eu.workers[1].worker_id]
    outliers.eject(eu.workers[1].worker_id, eu.workers[1].endpoint)
    assert outliers.usable(eu.workers, 0.0) == []
    stats.open_circuit(eu.name, now=0.0)  # no worker left: the region is out at once
    assert policy.rank(snap, stats, PARIS, 0.0)[0] == "us-east-1"
    # the circuit closes after its cooldown, but the ejected workers stay out until a
    # connect succeeds, so no request goes back to a dead region
    later = stats.config.circuit_open_s + 0.1
    assert policy.rank(snap, stats, PARIS, later)[0] == "eu-central-1"
    assert outliers.usable(eu.workers, later) == []


def test_observations_carry_the_unexplained_wait_to_the_region() -> None:
    """What ``meridian_router_region_wait_ms`` shows: no longer 0 for a slow region."""
    from router.observations import Observations

    stats = RouterStats()
    observed = Observations(stats, every_s=0.0)
    for i in range(20):
        observed.dispatch("eu-central-1", now=i * 0.01)
        observed.success("eu-central-1", service_ms=305.0, wait_ms=300.0, now=i * 0.01)
    observed.flush(0.2)
    region = stats.region("eu-central-1", 0.2)
    assert region.wait_ms > 250.0 and region.service_ms > 250.0
    assert region.outstanding == 0
