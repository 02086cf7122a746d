"""The generative figures a worker reports travel into the routing snapshot."""

from __future__ import annotations

from control_plane.health.summary import RegionSummary, WorkerSummary
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot
from worker.generation.types import EngineStats
from worker.metrics import TokenRates, WorkerMetrics


def _stats(prefill: int, decode: int) -> EngineStats:
    return EngineStats(
        running=3,
        waiting=2,
        kv_blocks_used=30,
        kv_blocks_total=100,
        block_size=16,
        prefix_queries=10,
        prefix_hits=4,
        prefill_tokens=prefill,
        decode_tokens=decode,
        preemptions=0,
    )


def test_token_rates_are_counter_deltas_over_time() -> None:
    rates = TokenRates(min_interval_s=0.5)
    rates.observe(10.0, 1000, 50)
    rates.observe(10.1, 5000, 60)  # too close: kept as it was
    assert rates.prefill_per_s == 0.0
    rates.observe(12.0, 3000, 250)
    assert rates.prefill_per_s == 1000.0
    assert rates.decode_per_s == 100.0


def test_worker_stats_json_carries_sequences_kv_and_hit_rate() -> None:
    metrics = WorkerMetrics()
    metrics.engines.sources["tiny:1"] = lambda: _stats(100, 10)
    data = metrics.snapshot()
    assert data["running"] == 3
    assert data["waiting"] == 2
    assert data["kv_blocks_used"] == 30
    assert data["kv_blocks_free"] == 70
    assert data["kv_block_size"] == 16
    assert data["prefix_hit_rate"] == 0.4
    assert data["in_flight"] == 5


def test_summary_round_trip_keeps_generative_figures_in_the_worker_view() -> None:
    worker = WorkerSummary(
        worker_id="w1",
        endpoint="http://127.0.0.1:1",
        state=HealthState.HEALTHY,
        models=("tiny:1",),
        running_seqs=4,
        waiting_seqs=1,
        kv_blocks_used=75,
        kv_blocks_free=25,
        kv_block_size=16,
        prefill_tokens_per_s=900.0,
        decode_tokens_per_s=120.0,
        prefix_hit_rate=0.5,
    )
    summary = RegionSummary(region="eu", replica="r", state=HealthState.HEALTHY, workers=(worker,))
    back = RegionSummary.from_json(summary.to_json())
    view = back.workers[0].view()
    assert (view.running_seqs, view.waiting_seqs) == (4, 1)
    assert view.kv_occupancy == 0.75
    assert view.decode_tokens_per_s == 120.0
    region = RegionView(name="eu", state=HealthState.HEALTHY, lat=0.0, lon=0.0, workers=(view,))
    snap = RoutingSnapshot(version=1, generated_at=0.0, regions=(region,))
    again = RoutingSnapshot.from_json(snap.to_json())
    assert again.regions[0].workers[0].kv_blocks_free == 25
