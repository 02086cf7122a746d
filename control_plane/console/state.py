"""The console's view of the fleet, as one JSON-ready document (pure: every input passed in).

Built from what the control plane already holds: the routing snapshot this replica
serves (regions with coordinates and states, deployments and weights), the merged
region summaries of the health plane (GPUs, workers, agents), the autoscaler's desired
replicas where this replica leads, the routers' traffic reports (client areas), and the
rollouts that are active or finished lately (``control_plane.console.rollouts``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from control_plane.console.traffic import TrafficView
from control_plane.health.summary import RegionSummary, WorkerSummary
from meridian.snapshot import RegionView, RoutingSnapshot

__all__ = ["fleet_state", "region_sample", "split_details"]

DETAIL_KEYS = ("gpus", "workers")

# (model, version, region) -> the autoscaler's desired replicas, or None
Desired = Callable[[str, str, str], int | None]


def _worker(w: WorkerSummary) -> dict[str, Any]:
    kv_total = w.kv_blocks_used + w.kv_blocks_free
    return {
        "id": w.worker_id,
        "state": w.state.value,
        "reason": w.reason,
        "models": list(w.models),
        "queue": w.queue_depth,
        "in_flight": w.in_flight,
        "rps": w.throughput_rps,
        "p50_ms": w.latency_p50_ms,
        "p99_ms": w.latency_p99_ms,
        "kv": round(w.kv_blocks_used / kv_total, 3) if kv_total else None,
    }


def _region(
    r: RegionView, summary: RegionSummary | None, traffic: TrafficView, now: float
) -> dict[str, Any]:
    seen = traffic.regions.get(r.name)
    workers = summary.workers if summary is not None else ()
    busy = [w for w in workers if w.throughput_rps > 0] or list(workers)
    weight = sum(w.throughput_rps for w in busy) or len(busy)

    def mean(attr: str) -> float:
        if not busy:
            return 0.0
        if weight == len(busy):
            return round(sum(getattr(w, attr) for w in busy) / len(busy), 2)
        return round(sum(getattr(w, attr) * w.throughput_rps for w in busy) / weight, 2)

    out: dict[str, Any] = {
        "name": r.name,
        "state": r.state.value,
        "lat": r.lat,
        "lon": r.lon,
        "gpu_type": r.gpu_type,
        "gpus_total": r.gpu_count,
        "gpus_healthy": r.healthy_gpus,
        "capacity_rps": round(r.capacity_rps, 1),
        "queue": r.queue_depth,
        "in_flight": r.in_flight,
        "rps": round(sum(w.throughput_rps for w in workers), 2),
        "p50_ms": mean("latency_p50_ms"),
        "p99_ms": mean("latency_p99_ms"),
        "ttft_ms": seen.ttft_ms if seen is not None else 0.0,
        "routed_rps": round(seen.rps, 2) if seen is not None else 0.0,
        "workers_total": len(workers),
        "workers_healthy": sum(1 for w in workers if w.state.routable),
        "agent": summary is not None and summary.connected,
        "reason": summary.reason if summary is not None else "no agent reports on it",
        "report_age_s": (
            round(max(0.0, now - summary.last_report_at), 1) if summary is not None else None
        ),
        "gpus": [
            {
                "index": g.index,
                "condition": g.condition,
                "reason": g.reason,
                "util": g.utilization,
                "temp_c": g.temperature_c,
                "mem_used": g.memory_used_bytes,
                "mem_total": g.memory_total_bytes,
                "ecc_corrected": g.ecc_corrected,
                "ecc_uncorrected": g.ecc_uncorrected,
                "xids": list(g.xids),
            }
            for g in (summary.gpus if summary is not None else ())
        ],
        "workers": [_worker(w) for w in workers],
    }
    return out


def fleet_state(
    snapshot: RoutingSnapshot | None,
    summaries: Mapping[str, RegionSummary],
    traffic: TrafficView,
    *,
    now: float,
    desired: Desired | None = None,
    replica: str = "",
    leader: bool = False,
    rollouts: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """The document each console receives: ``now`` is wall-clock seconds (the snapshot's
    ``generated_at`` and agents' report times are wall clock, from other hosts)."""
    regions = snapshot.regions if snapshot is not None else ()

    def ready(model: str, version: str, region: str) -> int:
        summary = summaries.get(region)
        key = f"{model}:{version}"
        workers = summary.workers if summary is not None else ()
        return sum(1 for w in workers if w.state.routable and key in w.models)

    return {
        "snapshot": {
            "version": snapshot.version if snapshot is not None else 0,
            "age_s": round(max(0.0, now - snapshot.generated_at), 1) if snapshot else None,
        },
        "replica": replica,
        "leader": leader,
        "regions": [_region(r, summaries.get(r.name), traffic, now) for r in regions],
        "deployments": [
            {
                "model": d.model,
                "version": d.version,
                "region": d.region,
                "weight": d.weight,
                "variant": d.variant,
                "ready": ready(d.model, d.version, d.region),
                "desired": desired(d.model, d.version, d.region) if desired else None,
            }
            for d in (snapshot.deployments if snapshot is not None else ())
        ],
        "areas": [a.to_dict() for a in traffic.areas],
        "routers": traffic.routers,
        "rollouts": list(rollouts),
    }


def split_details(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The state without each region's GPUs and workers (what the map and the tables
    need, for every console), and those details per region (for the consoles showing
    that region's page): with 50 regions of 8 GPUs and 8 workers, about 20 KiB instead
    of 150 per update."""
    regions = []
    details: dict[str, dict[str, Any]] = {}
    for region in state["regions"]:
        regions.append({k: v for k, v in region.items() if k not in DETAIL_KEYS})
        details[region["name"]] = {
            "name": region["name"],
            **{k: region[k] for k in DETAIL_KEYS if k in region},
        }
    return {**state, "regions": regions}, details


def region_sample(region: dict[str, Any]) -> tuple[float, float, float, float]:
    """The figures the region page charts over time: queue depth, p50 and p99 latency
    (ms) and time to first token (ms)."""
    return (
        float(region["queue"]),
        float(region["p50_ms"]),
        float(region["p99_ms"]),
        float(region["ttft_ms"]),
    )
