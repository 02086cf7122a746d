"""Finding the real services the integration tests need.

PostgreSQL, Redis and etcd are real. Outside CI a test whose service is not
reachable is skipped with the reason; in CI (``CI=true``) it fails instead, so a
missing service can never pass silently.

Environment:
- ``MERIDIAN_TEST_POSTGRES``: admin URL, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``
- ``MERIDIAN_TEST_REDIS``: default ``redis://127.0.0.1:6379/15``
- ``MERIDIAN_TEST_ETCD``: ``host:port`` of etcd's client port, default ``127.0.0.1:2379``
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_URL = os.environ.get(
    "MERIDIAN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MERIDIAN_TEST_REDIS", "redis://127.0.0.1:6379/15")
ETCD_ENDPOINT = os.environ.get("MERIDIAN_TEST_ETCD", "127.0.0.1:2379")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: object) -> None:
    """Skip (locally) or fail (in CI) because a required service is unreachable."""
    message = f"{what} is not reachable: {why}"
    if in_ci():
        pytest.fail(message + " (CI=true: a required service must be up)", pytrace=False)
    pytest.skip(message)


def tcp_reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create an empty PostgreSQL database for one test scope and drop it afterwards."""
    import sqlalchemy as sa

    try:
        admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        unavailable("PostgreSQL", exc)
        raise
    name = f"meridian_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.engine.make_url(POSTGRES_URL).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def require_redis() -> str:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        unavailable("Redis", exc)
    return REDIS_URL


def require_etcd() -> str:
    host, _, port = ETCD_ENDPOINT.rpartition(":")
    if not tcp_reachable(host, int(port)):
        unavailable("etcd", f"nothing listens on {ETCD_ENDPOINT}")
    return ETCD_ENDPOINT
