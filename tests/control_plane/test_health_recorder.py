"""Periodic health persistence: only changed rows, one transaction per flush."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.health.recorder import (
    HealthRecorder,
    HealthRow,
    SqlHealthSink,
    region_health_table,
)


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> sa.Engine:
    if request.param == "sqlite":
        return sa.create_engine(f"sqlite:///{tmp_path / 'health.db'}")
    return sa.create_engine(request.getfixturevalue("postgres_url"))


def row(region: str, state: str, healthy: int = 4, at: float = 1_700_000_000.0) -> HealthRow:
    return HealthRow(region, state, "", 4, healthy, 2, 2, at)


async def test_recorder_writes_only_changes_in_one_transaction(engine: sa.Engine) -> None:
    metadata = sa.MetaData()
    table = region_health_table(metadata)
    metadata.create_all(engine)
    sink = SqlHealthSink(engine, table)
    current = {"eu": row("eu", "healthy"), "us": row("us", "healthy")}
    recorder = HealthRecorder(lambda: current, sink, interval_s=60)

    assert await recorder.flush() == 2
    current["eu"] = row("eu", "healthy", at=1_700_000_001.0)  # only the report time moved
    assert await recorder.flush() == 0
    current["us"] = row("us", "degraded", healthy=3)
    assert await recorder.flush() == 1
    assert sink.writes == 2

    with engine.connect() as conn:
        stored = {r.region: r for r in conn.execute(sa.select(table))}
    assert stored["us"].state == "degraded" and stored["us"].healthy_gpus == 3
    assert stored["eu"].state == "healthy" and stored["eu"].last_report_at is not None
    engine.dispose()
