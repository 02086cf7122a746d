"""Engine settings: SQLite durability pragmas and the PostgreSQL driver choice."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from control_plane.db.session import create_database, normalize_url


def test_sqlite_runs_in_wal_with_foreign_keys_and_full_sync(tmp_path: Path) -> None:
    db = create_database(f"sqlite:///{tmp_path / 'nested' / 'x.sqlite'}")
    try:
        with db.reads() as s:
            assert s.execute(sa.text("PRAGMA journal_mode")).scalar() == "wal"
            assert s.execute(sa.text("PRAGMA foreign_keys")).scalar() == 1
            assert s.execute(sa.text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert db.backend == "sqlite"
    finally:
        db.dispose()


def test_sqlite_write_transactions_take_the_lock_up_front(tmp_path: Path) -> None:
    """A second writer waits for the first instead of failing half-way with 'locked'."""
    db = create_database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    try:
        with db.writes() as s, s.begin():
            s.execute(sa.text("CREATE TABLE t (v INTEGER)"))
        order: list[str] = []
        first_has_lock = threading.Event()
        release = threading.Event()

        def first() -> None:
            with db.writes() as s, s.begin():
                s.execute(sa.text("SELECT count(*) FROM t"))  # BEGIN IMMEDIATE already locked
                first_has_lock.set()
                release.wait(timeout=10)
                s.execute(sa.text("INSERT INTO t VALUES (1)"))
                order.append("first")

        def second() -> None:
            with db.writes() as s, s.begin():
                n = s.execute(sa.text("SELECT count(*) FROM t")).scalar()
                s.execute(sa.text("INSERT INTO t VALUES (2)"))
                order.append(f"second saw {n}")

        t1 = threading.Thread(target=first)
        t1.start()
        assert first_has_lock.wait(timeout=10)
        t2 = threading.Thread(target=second)
        t2.start()
        release.set()
        t1.join(timeout=20)
        t2.join(timeout=20)
        assert order == ["first", "second saw 1"]
    finally:
        db.dispose()


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    assert normalize_url("postgresql://u:p%40ss@h/db") == "postgresql+psycopg://u:p%40ss@h/db"
    assert normalize_url("sqlite:///x.sqlite") == "sqlite:///x.sqlite"


def test_dispose_waits_for_a_connection_still_in_use_and_closes_it(tmp_path: Path) -> None:
    # a query finishing on a worker thread while the control plane shuts down: its
    # connection comes back after dispose began, and must not be left open
    db = create_database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    taken, raw = threading.Event(), []

    def query() -> None:
        with db.engine.connect() as conn:
            raw.append(conn.connection.dbapi_connection)
            taken.set()
            time.sleep(0.3)  # the query's own time, on its thread
            conn.execute(sa.text("SELECT 1"))

    worker = threading.Thread(target=query)
    worker.start()
    assert taken.wait(10)
    db.dispose()
    worker.join(10)
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        raw[0].execute("SELECT 1")
