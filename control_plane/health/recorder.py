"""Periodic persistence of region health: bounded writes, however often agents report.

The leader's :class:`HealthRecorder` writes one row per region (state, reason,
GPU counts, last report time) every ``interval_s`` seconds, in one transaction,
and only for regions whose row changed. The live view stays in memory; what is
persisted is for operators and post-mortems (when did a region go down?).

Sinks: :class:`MemoryHealthSink` (the default: no table needed) and
:class:`SqlHealthSink`, which writes to the ``region_health`` table described by
:func:`region_health_table` (a proposal for the registry's migrations).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import sqlalchemy as sa

from control_plane.health.summary import RegionSummary
from meridian.snapshot import HealthState

__all__ = [
    "HealthRecorder",
    "HealthRow",
    "HealthSink",
    "MemoryHealthSink",
    "SqlHealthSink",
    "region_health_table",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HealthRow:
    region: str
    state: str
    reason: str
    gpu_count: int
    healthy_gpus: int
    workers: int
    routable_workers: int
    last_report_at: float  # wall clock; 0 when never

    def key(self) -> tuple[object, ...]:
        """What a change worth persisting is (load figures are not persisted)."""
        return (self.state, self.reason, self.gpu_count, self.healthy_gpus, self.workers,
                self.routable_workers)  # fmt: skip


class HealthSink(Protocol):
    async def write(self, rows: list[HealthRow]) -> None: ...


class MemoryHealthSink:
    def __init__(self) -> None:
        self.rows: dict[str, HealthRow] = {}
        self.writes = 0

    async def write(self, rows: list[HealthRow]) -> None:
        self.rows.update({r.region: r for r in rows})
        self.writes += 1


def region_health_table(metadata: sa.MetaData) -> sa.Table:
    """The proposed ``region_health`` table: one row per region, upserted."""
    return sa.Table(
        "region_health",
        metadata,
        sa.Column("region", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False, default=""),
        sa.Column("gpu_count", sa.Integer, nullable=False, default=0),
        sa.Column("healthy_gpus", sa.Integer, nullable=False, default=0),
        sa.Column("workers", sa.Integer, nullable=False, default=0),
        sa.Column("routable_workers", sa.Integer, nullable=False, default=0),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


class SqlHealthSink:
    """Upserts rows into ``table`` in one transaction per flush (in a worker thread)."""

    def __init__(self, engine: sa.Engine, table: sa.Table) -> None:
        self._engine = engine
        self._table = table
        self.writes = 0

    async def write(self, rows: list[HealthRow]) -> None:
        await asyncio.to_thread(self._write, rows)

    def _write(self, rows: list[HealthRow]) -> None:
        now = dt.datetime.now(dt.UTC)
        t = self._table
        with self._engine.begin() as conn:
            names = [r.region for r in rows]
            existing = set(conn.scalars(sa.select(t.c.region).where(t.c.region.in_(names))))
            for r in rows:
                values = {
                    "state": r.state,
                    "reason": r.reason[:1024],
                    "gpu_count": r.gpu_count,
                    "healthy_gpus": r.healthy_gpus,
                    "workers": r.workers,
                    "routable_workers": r.routable_workers,
                    "last_report_at": dt.datetime.fromtimestamp(r.last_report_at, dt.UTC)
                    if r.last_report_at
                    else None,
                    "updated_at": now,
                }
                if r.region in existing:
                    conn.execute(t.update().where(t.c.region == r.region).values(**values))
                else:
                    conn.execute(t.insert().values(region=r.region, **values))
        self.writes += 1


def row_of(region: str, summary: RegionSummary | None, state: HealthState) -> HealthRow:
    if summary is None:
        return HealthRow(region, state.value, "no agent is connected", 0, 0, 0, 0, 0.0)
    return HealthRow(
        region=region,
        state=state.value,
        reason=summary.reason,
        gpu_count=len(summary.gpus),
        healthy_gpus=summary.healthy_gpus,
        workers=len(summary.workers),
        routable_workers=sum(1 for w in summary.workers if w.state.routable),
        last_report_at=summary.last_report_at,
    )


class HealthRecorder:
    """Leader-only: flush changed region rows to ``sink`` every ``interval_s``."""

    def __init__(
        self,
        rows: Callable[[], Mapping[str, HealthRow]],
        sink: HealthSink,
        *,
        interval_s: float = 5.0,
    ) -> None:
        self._rows = rows
        self._sink = sink
        self._interval = interval_s
        self._written: dict[str, tuple[object, ...]] = {}
        self.flushes = 0

    async def flush(self) -> int:
        """Write the rows that changed since the last flush; returns how many."""
        current = self._rows()
        changed = [row for name, row in current.items() if self._written.get(name) != row.key()]
        if changed:
            await self._sink.write(changed)
            self._written.update({r.region: r.key() for r in changed})
            self.flushes += 1
        return len(changed)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as exc:
                log.warning("persisting region health failed: %s; retrying later", exc)
