"""The control plane's autoscaler driving the fleet simulator."""

from __future__ import annotations

import numpy as np

from router.policies import NearestPolicy
from simulator.data import Places, Trace
from simulator.elastic import ElasticConfig, ElasticFleet
from simulator.engine import FleetSpec, SimConfig, Simulation
from simulator.workload import Burst, CostModel, Workload


def one_city_workload(rate: float, burst: Burst | None) -> Workload:
    rng = np.random.default_rng(2)
    n = 50_000
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    trace = Trace("flat", np.linspace(0.0, 3600.0, n), np.zeros(n), rng.exponential(20.0, n))
    cost = CostModel(overhead_ms=0.0, prefill_ms_per_token=0.0, decode_ms_per_token=1.0)
    return Workload(places, trace, rate, cost=cost, bursts=(burst,) if burst else (), seed=4)


def test_a_step_adds_gpus_after_the_cold_start_and_they_go_after_it() -> None:
    # 400 req/s x 20 ms = 8 busy GPUs; 4x for [10 s, 20 s) -> 32 busy
    burst = Burst(0.0, 0.0, radius_km=100.0, factor=4.0, start_s=10.0, end_s=20.0)
    workload = one_city_workload(400.0, burst)
    fleet = FleetSpec(("solo",), np.zeros(1), np.zeros(1), np.array([12]))
    elastic = ElasticFleet(("solo",), ElasticConfig(cold_start_s=1.0, max_replicas=60))
    sim = Simulation(NearestPolicy(), fleet, workload, SimConfig(duration_s=40.0, model="llm"))
    sim.on_slice = elastic
    result = sim.run()
    times = np.array([t for t, _ in elastic.timeline])
    serving = np.array([int(s[0]) for _, s in elastic.timeline])
    before = serving[times < 10.0].max()
    during = serving[(times >= 10.0) & (times < 20.0)]
    assert during.max() >= 2 * before  # the step brought capacity
    first_new = times[(times >= 10.0) & (serving > before)][0]
    assert 10.0 + 1.0 <= first_new <= 10.0 + 6.0  # after the cold start, within seconds
    assert serving[-1] < during.max()  # and it went away after the step
    assert serving.min() >= 1 and elastic.peak[0] <= 60
    assert result.failed == 0 and result.completed > 0.99 * result.requests
    static_gpu_s = float(elastic.peak[0]) * 40.0
    assert elastic.gpu_seconds(sim) < 0.8 * static_gpu_s  # cheaper than holding the peak
    status = elastic.autoscaler.status(0)
    assert status is not None and status.ready_after_s and min(status.ready_after_s) >= 1.0


def test_the_budget_holds_across_regions() -> None:
    workload = one_city_workload(800.0, None)  # 16 busy GPUs' worth, 2 regions, budget 10
    fleet = FleetSpec(("a", "b"), np.zeros(2), np.array([0.0, 1.0]), np.array([2, 2]))
    elastic = ElasticFleet(("a", "b"), ElasticConfig(cold_start_s=0.5, gpu_budget=10))
    sim = Simulation(NearestPolicy(), fleet, workload, SimConfig(duration_s=12.0, model="llm"))
    sim.on_slice = elastic
    sim.run()
    assert max(int(s.sum()) for _, s in elastic.timeline) == 10
    assert all(int(s.sum()) <= 10 for _, s in elastic.timeline)
