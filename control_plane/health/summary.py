"""A region's health summary: what one control-plane replica knows about a region.

Each replica that holds a region's agent stream writes this summary (JSON) to
the coordination backend under ``/meridian/fleet/regions/<region>/<replica>``;
every replica's :class:`~control_plane.health.fleet_view.FleetView` reads them
back. It carries only what routing and operators need, never the raw report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

from meridian.snapshot import HealthState, WorkerView

__all__ = ["GpuSummary", "RegionSummary", "WorkerSummary"]


@dataclass(frozen=True, slots=True)
class GpuSummary:
    index: int
    condition: str  # ok | impaired | failed
    reason: str = ""
    utilization: float = 0.0
    temperature_c: float = 0.0
    memory_used_bytes: int = 0
    memory_total_bytes: int = 0
    ecc_corrected: int = 0  # volatile counts since the driver loaded
    ecc_uncorrected: int = 0
    xids: tuple[int, ...] = ()  # distinct XID codes seen since the agent started


@dataclass(frozen=True, slots=True)
class WorkerSummary:
    worker_id: str
    endpoint: str
    state: HealthState
    reason: str = ""
    grpc_endpoint: str = ""
    models: tuple[str, ...] = ()
    queue_depth: int = 0
    in_flight: int = 0
    throughput_rps: float = 0.0
    capacity_rps: float = 0.0
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    # generative models (zero for others): sequences, KV cache, token rates
    running_seqs: int = 0
    waiting_seqs: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0  # tokens per KV block
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    prefix_hit_rate: float = 0.0

    def view(self) -> WorkerView:
        return WorkerView(
            worker_id=self.worker_id,
            endpoint=self.endpoint,
            state=self.state,
            models=self.models,
            queue_depth=self.queue_depth,
            in_flight=self.in_flight,
            throughput_rps=self.throughput_rps,
            latency_p50_ms=self.latency_p50_ms,
            capacity_rps=self.capacity_rps,
            grpc_endpoint=self.grpc_endpoint,
            running_seqs=self.running_seqs,
            waiting_seqs=self.waiting_seqs,
            kv_blocks_used=self.kv_blocks_used,
            kv_blocks_free=self.kv_blocks_free,
            kv_block_size=self.kv_block_size,
            prefill_tokens_per_s=self.prefill_tokens_per_s,
            decode_tokens_per_s=self.decode_tokens_per_s,
            prefix_hit_rate=self.prefix_hit_rate,
        )


@dataclass(frozen=True, slots=True)
class RegionSummary:
    region: str
    replica: str
    state: HealthState
    reason: str = ""
    agent_id: str = ""
    agent_version: str = ""
    connected: bool = True
    last_report_at: float = 0.0  # wall clock of the last report received
    gpus: tuple[GpuSummary, ...] = ()
    workers: tuple[WorkerSummary, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy_gpus(self) -> int:
        return sum(1 for g in self.gpus if g.condition != "failed")

    def state_key(self) -> tuple[object, ...]:
        """What changes routing membership (as opposed to load figures)."""
        return (
            self.state,
            tuple((w.worker_id, w.state, w.endpoint, w.models) for w in self.workers),
            self.healthy_gpus,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes) -> RegionSummary:
        d = orjson.loads(raw)
        return cls(
            region=d["region"],
            replica=d["replica"],
            state=HealthState(d["state"]),
            reason=d.get("reason", ""),
            agent_id=d.get("agent_id", ""),
            agent_version=d.get("agent_version", ""),
            connected=bool(d.get("connected", True)),
            last_report_at=float(d.get("last_report_at", 0.0)),
            gpus=tuple(
                GpuSummary(**{**_known(GpuSummary, g), "xids": tuple(g.get("xids", ()))})
                for g in d.get("gpus", ())
            ),
            workers=tuple(
                WorkerSummary(
                    **{
                        **_known(WorkerSummary, w),
                        "state": HealthState(w["state"]),
                        "models": tuple(w["models"]),
                    }
                )
                for w in d.get("workers", ())
            ),
            extra=d.get("extra", {}),
        )


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` that ``kind`` has: replicas of another version share these
    summaries during a rolling upgrade, and a field one does not know yet is no error."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in data.items() if k in names}
