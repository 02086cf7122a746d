"""The health ledger: the live, in-memory view of the regions whose agents stream here.

Every report is assessed by the pure :class:`HealthPolicy` as it arrives (no I/O
on this path). The ledger tells its listener what kind of change a report made:
``STATE`` when a region's or a worker's state, or the set of workers and their
models changed (routing membership: publish soon), ``LOAD`` when only load
figures moved (publish at a slower cadence), ``GONE`` when a region's agent left
and its heartbeat deadline passed. :meth:`tick` applies the heartbeat rule.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.health.policy import HealthPolicy, RegionAssessment
from control_plane.health.summary import GpuSummary, RegionSummary, WorkerSummary
from meridian.snapshot import HealthState

__all__ = ["Change", "HealthLedger"]


class Change(enum.Enum):
    STATE = "state"
    LOAD = "load"
    GONE = "gone"


@dataclass
class _Record:
    region: str
    token: object
    agent_id: str
    agent_version: str
    inventory: tuple[Any, ...]
    connected: bool = True
    report: Any = None  # the latest proto Report
    last_report_mono: float | None = None
    last_report_wall: float = 0.0
    assessment: RegionAssessment | None = None
    state_key: tuple[object, ...] = ()
    reports: int = 0
    summary: RegionSummary | None = field(default=None, repr=False)


def _state_key(assessment: RegionAssessment, report: Any) -> tuple[object, ...]:
    workers = assessment.workers
    members = (
        tuple(
            (w.worker_id, workers[w.worker_id].state, w.endpoint, tuple(w.models))
            for w in report.workers
        )
        if report is not None
        else ()
    )
    return (assessment.state, members, assessment.healthy_gpus)


class HealthLedger:
    def __init__(
        self,
        policy: HealthPolicy,
        *,
        replica: str,
        on_change: Callable[[str, Change], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy
        self.replica = replica
        self._listeners: list[Callable[[str, Change], None]] = [on_change] if on_change else []
        self._clock = clock
        self._wall = wall_clock
        self._records: dict[str, _Record] = {}
        self.reports_ingested = 0
        self.gpu_reports_ingested = 0

    def add_listener(self, listener: Callable[[str, Change], None]) -> None:
        """Also tell ``listener`` about every assessed report and heartbeat change."""
        self._listeners.append(listener)

    def _notify(self, region: str, change: Change) -> None:
        for listener in self._listeners:
            listener(region, change)

    # --- streams ---------------------------------------------------------------------------

    def register(
        self,
        region: str,
        *,
        token: object,
        agent_id: str,
        agent_version: str,
        inventory: Sequence[Any],
    ) -> None:
        """A (re)connected agent; its previous report is kept until a new one arrives."""
        old = self._records.get(region)
        record = _Record(region, token, agent_id, agent_version, tuple(inventory))
        if old is not None:
            record.report, record.last_report_mono = old.report, old.last_report_mono
            record.last_report_wall, record.assessment = old.last_report_wall, old.assessment
            record.state_key, record.reports = old.state_key, old.reports
        self._records[region] = record
        self._assess(record, self._clock())

    def disconnect(self, region: str, token: object) -> None:
        record = self._records.get(region)
        if record is not None and record.token is token:
            record.connected = False
            record.summary = None

    def ingest(self, region: str, token: object, report: Any) -> None:
        record = self._records.get(region)
        if record is None or record.token is not token:
            return  # a stream that was replaced by a newer one for the same region
        now = self._clock()
        record.report = report
        record.last_report_mono = now
        record.last_report_wall = self._wall()
        record.reports += 1
        self.reports_ingested += 1
        self.gpu_reports_ingested += len(report.gpus)
        self._assess(record, now)

    def _assess(self, record: _Record, now: float) -> None:
        report = record.report
        assessment = self.policy.assess_region(
            report.gpus if report is not None else None,
            report.workers if report is not None else (),
            last_report_at=record.last_report_mono,
            now=now,
        )
        key = _state_key(assessment, report)
        record.assessment = assessment
        record.summary = None
        if key != record.state_key:
            record.state_key = key
            self._notify(record.region, Change.STATE)
        else:
            self._notify(record.region, Change.LOAD)

    def tick(self) -> None:
        """Apply the heartbeat rule; forget regions whose agent left and went silent."""
        now = self._clock()
        timeout = self.policy.config.heartbeat_timeout_s
        for record in list(self._records.values()):
            silent = record.last_report_mono is None or now - record.last_report_mono > timeout
            if not record.connected and silent:
                del self._records[record.region]
                self._notify(record.region, Change.GONE)
            elif (
                silent
                and record.last_report_mono is not None
                and record.assessment is not None
                and record.assessment.state != HealthState.DOWN
            ):
                self._assess(record, now)

    # --- reading ---------------------------------------------------------------------------

    def regions(self) -> list[str]:
        return list(self._records)

    def state(self, region: str) -> HealthState | None:
        record = self._records.get(region)
        if record is None or record.assessment is None:
            return None
        return record.assessment.state

    def summary(self, region: str) -> RegionSummary | None:
        record = self._records.get(region)
        if record is None:
            return None
        if record.summary is None:
            record.summary = self._summarize(record)
        return record.summary

    def _summarize(self, record: _Record) -> RegionSummary:
        assessment = record.assessment
        assert assessment is not None
        report = record.report
        gpus: list[GpuSummary] = []
        workers: list[WorkerSummary] = []
        if report is not None:
            conditions = {g.index: g for g in assessment.gpus}
            for g in report.gpus:
                a = conditions[g.index]
                gpus.append(
                    GpuSummary(
                        index=g.index,
                        condition=a.condition.value,
                        reason=a.reason,
                        utilization=round(g.utilization, 1),
                        temperature_c=round(g.temperature_c, 1),
                        memory_used_bytes=g.memory_used_bytes,
                        memory_total_bytes=g.memory_total_bytes,
                        ecc_corrected=getattr(g, "ecc_corrected", 0),
                        ecc_uncorrected=g.ecc_uncorrected,
                        xids=tuple(sorted({*g.recent_xids, *(x.code for x in g.xid_events)})),
                    )
                )
            for w in report.workers:
                wa = assessment.workers[w.worker_id]
                workers.append(
                    WorkerSummary(
                        worker_id=w.worker_id,
                        endpoint=w.endpoint,
                        state=wa.state,
                        # a worker's own last error (e.g. a variant refused by its accuracy
                        # probes) says more to an operator than its state alone
                        reason="; ".join(r for r in (wa.reason, w.error) if r),
                        grpc_endpoint=w.grpc_endpoint,
                        models=tuple(w.models),
                        queue_depth=w.queue_depth,
                        in_flight=w.in_flight,
                        throughput_rps=round(w.throughput_rps, 2),
                        capacity_rps=round(w.capacity_rps, 2),
                        latency_p50_ms=round(w.latency_p50_ms, 2),
                        latency_p99_ms=round(w.latency_p99_ms, 2),
                        running_seqs=w.running_seqs,
                        waiting_seqs=w.waiting_seqs,
                        kv_blocks_used=w.kv_blocks_used,
                        kv_blocks_free=w.kv_blocks_free,
                        kv_block_size=w.kv_block_size,
                        prefill_tokens_per_s=round(w.prefill_tokens_per_s, 1),
                        decode_tokens_per_s=round(w.decode_tokens_per_s, 1),
                        prefix_hit_rate=round(w.prefix_hit_rate, 3),
                    )
                )
        return RegionSummary(
            region=record.region,
            replica=self.replica,
            state=assessment.state,
            reason=assessment.reason,
            agent_id=record.agent_id,
            agent_version=record.agent_version,
            connected=record.connected,
            last_report_at=record.last_report_wall,
            gpus=tuple(gpus),
            workers=tuple(workers),
        )
