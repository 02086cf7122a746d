"""Finding the real services the integration tests need.

PostgreSQL, Redis and etcd are real. Outside CI a test whose service is not
reachable is skipped with the reason; in CI (``CI=true``) it fails instead, so a
missing service can never pass silently.

Environment:
- ``MERIDIAN_TEST_POSTGRES``: admin URL, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``
- ``MERIDIAN_TEST_REDIS``: default ``redis://127.0.0.1:6379/15``
- ``MERIDIAN_TEST_ETCD``: ``host:port`` of a running etcd's client port. When it is not
  set and an ``etcd`` binary is on the PATH, the session starts its own etcd (a
  temporary data directory, free loopback ports) on first use and stops it at the end
  (``stop_session_etcd``, called from ``tests/conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest

from meridian.waiting import wait_until

POSTGRES_URL = os.environ.get(
    "MERIDIAN_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("MERIDIAN_TEST_REDIS", "redis://127.0.0.1:6379/15")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, why: object) -> NoReturn:
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


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdExitedError(RuntimeError):
    pass


class EtcdServer:
    """A single-member etcd on free loopback ports with its own temporary data directory."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.workdir = Path(tempfile.mkdtemp(prefix="meridian-test-etcd-"))
        self.client_port = free_loopback_port()
        self.peer_port = free_loopback_port()
        self.log = self.workdir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The etcd process's id while it runs (to stop and continue it in chaos tests)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 30.0) -> None:
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [self.binary, "--name", "meridian-test", "--data-dir", str(self.workdir / "data")]
        args += ["--listen-client-urls", client, "--advertise-client-urls", client]
        args += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        args += ["--initial-cluster", f"meridian-test={peer}"]
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout=timeout, interval=0.05, what=f"etcd on {client}")

    def healthy(self) -> bool:
        """True once etcd answers its health check; raises if the process has exited."""
        if self._proc is None or self._proc.poll() is not None:
            raise EtcdExitedError(f"etcd exited: {self.log_tail()}")
        url = f"http://127.0.0.1:{self.client_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(json.loads(response.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


_session_etcd: list[EtcdServer] = []  # at most one, started on first use, stopped at session end


def start_session_etcd(binary: str, attempts: int = 3) -> str:
    """Start this session's etcd (once); retried on fresh ports if a port was taken meanwhile."""
    if _session_etcd:
        return _session_etcd[0].endpoint
    failure = ""
    for _ in range(attempts):
        server = EtcdServer(binary)
        try:
            server.start()
        except (EtcdExitedError, TimeoutError) as exc:
            failure = f"{exc}\n{server.log_tail()}"
            server.stop()
            continue
        _session_etcd.append(server)
        return server.endpoint
    pytest.fail(f"could not start {binary}: {failure}", pytrace=False)


def stop_session_etcd() -> None:
    while _session_etcd:
        _session_etcd.pop().stop()


def require_etcd() -> str:
    """``MERIDIAN_TEST_ETCD`` if set, else an etcd this session starts from the PATH's binary."""
    configured = os.environ.get("MERIDIAN_TEST_ETCD")
    if configured:
        host, _, port = configured.rpartition(":")
        if not tcp_reachable(host, int(port)):
            unavailable("etcd", f"nothing listens on {configured} (MERIDIAN_TEST_ETCD)")
        return configured
    binary = shutil.which("etcd")
    if binary is None:
        unavailable(
            "etcd",
            "MERIDIAN_TEST_ETCD is not set and no etcd binary is on the PATH"
            " (apt-get install etcd-server)",
        )
    return start_session_etcd(binary)
