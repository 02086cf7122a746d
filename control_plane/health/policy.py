"""The health policy: a pure function from a region's latest report to states.

Inputs are all passed in (the report's GPU and worker figures, when it arrived,
the clock, the configuration), so the rules are tested on plain data. The
objects passed in only need the attributes of :class:`GpuLike` and
:class:`WorkerLike`: the protobuf messages of ``proto/region.proto`` have them,
so reports are assessed without copying.

Rules:
- a region silent for ``missed_heartbeats`` report intervals is ``down``;
- a GPU with a fatal XID (e.g. 79 fallen off the bus, 48 double-bit ECC), an
  uncorrectable ECC error, or that stopped answering (hung) has *failed*: the
  workers on it are ``down`` and the region is ``degraded``;
- when every GPU failed the region is ``down``;
- an overheating or hardware-throttled GPU is *impaired*: its workers and the
  region are ``degraded`` but keep serving;
- a worker that is not ready is ``down``; one that is missing is simply absent;
- a worker its agent is draining (scale-down) is ``draining``: no new traffic.
Operator draining and the registry's status are applied on top, by the caller.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from meridian.snapshot import HealthState

__all__ = [
    "DEFAULT_FATAL_XIDS",
    "GpuAssessment",
    "GpuCondition",
    "GpuLike",
    "HealthConfig",
    "HealthPolicy",
    "RegionAssessment",
    "WorkerAssessment",
    "WorkerLike",
]

# XIDs after which a GPU cannot be trusted until it is reset (NVIDIA's XID catalogue):
# 48 double-bit ECC, 63/64 row-remapping events/failure, 74 NVLink error, 79 fallen off
# the bus, 92 high single-bit ECC rate, 94/95 contained/uncontained ECC error,
# 119/120 GSP RPC timeout / GSP error, 140 unrecovered ECC error.
DEFAULT_FATAL_XIDS: frozenset[int] = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120, 140})


class XidLike(Protocol):
    code: int


class GpuLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def temperature_c(self) -> float: ...
    @property
    def ecc_uncorrected(self) -> int: ...
    @property
    def hung(self) -> bool: ...
    @property
    def xid_events(self) -> Sequence[XidLike]: ...
    @property
    def recent_xids(self) -> Sequence[int]: ...
    @property
    def throttle_reasons(self) -> Sequence[str]: ...


class WorkerLike(Protocol):
    @property
    def worker_id(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def draining(self) -> bool: ...
    @property
    def gpu_indices(self) -> Sequence[int]: ...


class GpuCondition(enum.StrEnum):
    OK = "ok"
    IMPAIRED = "impaired"  # serving, but slower (thermal/power throttling)
    FAILED = "failed"


@dataclass(frozen=True)
class HealthConfig:
    report_interval_s: float = 1.0
    missed_heartbeats: int = 3
    fatal_xids: frozenset[int] = DEFAULT_FATAL_XIDS
    critical_temperature_c: float = 90.0
    impairing_throttles: frozenset[str] = frozenset({"hw_slowdown", "hw_thermal", "sw_thermal"})

    @property
    def heartbeat_timeout_s(self) -> float:
        return self.report_interval_s * self.missed_heartbeats


@dataclass(frozen=True, slots=True)
class GpuAssessment:
    index: int
    condition: GpuCondition
    reason: str = ""


@dataclass(frozen=True, slots=True)
class WorkerAssessment:
    worker_id: str
    state: HealthState
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RegionAssessment:
    state: HealthState
    reason: str
    gpus: tuple[GpuAssessment, ...] = ()
    workers: dict[str, WorkerAssessment] = field(default_factory=dict)

    @property
    def healthy_gpus(self) -> int:
        return sum(1 for g in self.gpus if g.condition != GpuCondition.FAILED)


class HealthPolicy:
    """Pure rules; one instance per configuration."""

    def __init__(self, config: HealthConfig) -> None:
        self.config = config

    def assess_gpu(self, gpu: GpuLike) -> GpuAssessment:
        fatal = self.config.fatal_xids
        xids = sorted(
            {x.code for x in gpu.xid_events if x.code in fatal}
            | {c for c in gpu.recent_xids if c in fatal}
        )
        if xids:
            codes = ", ".join(str(c) for c in xids)
            return GpuAssessment(gpu.index, GpuCondition.FAILED, f"fatal XID {codes}")
        if gpu.ecc_uncorrected > 0:
            return GpuAssessment(
                gpu.index,
                GpuCondition.FAILED,
                f"{gpu.ecc_uncorrected} uncorrectable ECC errors",
            )
        if gpu.hung:
            return GpuAssessment(gpu.index, GpuCondition.FAILED, "GPU is not responding")
        if gpu.temperature_c >= self.config.critical_temperature_c:
            return GpuAssessment(
                gpu.index, GpuCondition.IMPAIRED, f"overheating at {gpu.temperature_c:.0f} C"
            )
        throttles = [t for t in gpu.throttle_reasons if t in self.config.impairing_throttles]
        if throttles:
            return GpuAssessment(
                gpu.index, GpuCondition.IMPAIRED, "throttled: " + ", ".join(sorted(throttles))
            )
        return GpuAssessment(gpu.index, GpuCondition.OK)

    def assess_worker(self, worker: WorkerLike, gpus: dict[int, GpuAssessment]) -> WorkerAssessment:
        if not worker.ready:
            return WorkerAssessment(worker.worker_id, HealthState.DOWN, "not ready")
        if worker.draining:
            return WorkerAssessment(worker.worker_id, HealthState.DRAINING, "scaling down")
        impaired = ""
        for index in worker.gpu_indices:
            gpu = gpus.get(index)
            if gpu is None:
                continue
            if gpu.condition == GpuCondition.FAILED:
                return WorkerAssessment(
                    worker.worker_id, HealthState.DOWN, f"GPU {index} failed: {gpu.reason}"
                )
            if gpu.condition == GpuCondition.IMPAIRED and not impaired:
                impaired = f"GPU {index} {gpu.reason}"
        if impaired:
            return WorkerAssessment(worker.worker_id, HealthState.DEGRADED, impaired)
        return WorkerAssessment(worker.worker_id, HealthState.HEALTHY)

    def assess_region(
        self,
        gpus: Iterable[GpuLike] | None,
        workers: Iterable[WorkerLike],
        *,
        last_report_at: float | None,
        now: float,
    ) -> RegionAssessment:
        """``gpus`` None means no report has arrived yet; times are monotonic seconds."""
        if gpus is None or last_report_at is None:
            return RegionAssessment(HealthState.DOWN, "no report received yet")
        gpu_list = tuple(self.assess_gpu(g) for g in gpus)
        by_index = {g.index: g for g in gpu_list}
        worker_map = {w.worker_id: self.assess_worker(w, by_index) for w in workers}
        silent = now - last_report_at
        if silent > self.config.heartbeat_timeout_s:
            down = {
                wid: WorkerAssessment(wid, HealthState.DOWN, "region missed its heartbeats")
                for wid in worker_map
            }
            return RegionAssessment(
                HealthState.DOWN,
                f"no report for {silent:.1f}s (over {self.config.missed_heartbeats} intervals)",
                gpu_list,
                down,
            )
        failed = [g for g in gpu_list if g.condition == GpuCondition.FAILED]
        if gpu_list and len(failed) == len(gpu_list):
            return RegionAssessment(HealthState.DOWN, "all GPUs failed", gpu_list, worker_map)
        reasons = [f"GPU {g.index} {g.reason}" for g in gpu_list if g.condition != GpuCondition.OK]
        reasons += [
            f"worker {w.worker_id} {w.reason}"
            for w in worker_map.values()
            if w.state == HealthState.DOWN and not w.reason.startswith("GPU")
        ]
        if reasons:
            return RegionAssessment(HealthState.DEGRADED, "; ".join(reasons), gpu_list, worker_map)
        return RegionAssessment(HealthState.HEALTHY, "", gpu_list, worker_map)
