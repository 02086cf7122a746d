"""Engines and session factories for the registry database.

SQLite (the embedded default) runs in WAL mode with foreign keys on and
``synchronous=FULL``, so a committed write survives a crash of the process or the
machine. Write transactions on SQLite start with ``BEGIN IMMEDIATE``: a
transaction that reads and then writes can otherwise fail with "database is
locked" when another writer committed in between. PostgreSQL is reached through
psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "create_database", "create_engine", "normalize_url"]

_WRITE_OPTION = "meridian_write"
SQLITE_BUSY_TIMEOUT_S = 30.0


def normalize_url(url: str) -> str:
    """Pick psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def create_engine(url: str, **kwargs: Any) -> sa.Engine:
    """An engine for ``url`` with the per-backend settings described above."""
    url = normalize_url(url)
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **kwargs)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_S)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # let SQLAlchemy, not the sqlite3 module, emit BEGIN
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass(frozen=True)
class Database:
    """One engine and two session factories: ``reads`` and ``writes``.

    Both share the engine's pool; ``writes`` marks its transactions so SQLite takes
    the write lock up front. On PostgreSQL the two are the same.
    """

    engine: sa.Engine
    reads: sessionmaker[Session]
    writes: sessionmaker[Session]

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    def dispose(self, wait_s: float = 5.0) -> None:
        """Close the pool's connections. One still checked out (a query finishing on a
        worker thread whose task was cancelled at shutdown) is waited for, up to
        ``wait_s``: the pool closes only the connections it holds, and one returned
        later would be left open for the garbage collector."""
        checked_out = getattr(self.engine.pool, "checkedout", None)
        deadline = time.monotonic() + wait_s
        while checked_out is not None and checked_out() > 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.engine.dispose()


def create_database(url: str, **engine_kwargs: Any) -> Database:
    engine = create_engine(url, **engine_kwargs)
    write_engine = engine.execution_options(**{_WRITE_OPTION: True})
    return Database(
        engine=engine,
        reads=sessionmaker(bind=engine, expire_on_commit=False),
        writes=sessionmaker(bind=write_engine, expire_on_commit=False),
    )
