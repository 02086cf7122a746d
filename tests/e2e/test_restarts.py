"""Restarts that must not be seen, with real processes under steady traffic: the router
replaced by a new process on the same port, a region agent killed and started again."""

from __future__ import annotations

import os
import signal

import pytest

from demo.fleet import LocalFleet
from meridian.waiting import wait_until
from tests.e2e.test_production import Production, Traffic, production

pytestmark = pytest.mark.slow

__all__ = ["production"]


def _log_has(fleet: LocalFleet, name: str, text: str) -> bool:
    child = next(c for c in fleet.routers + list(fleet.agents.values()) if c.name == name)
    try:
        return text in child.log_path.read_text(errors="replace")
    except OSError:
        return False


def test_a_router_restart_refuses_no_connection(production: Production) -> None:
    fleet = production.fleet
    old = fleet.routers[0]
    traffic = Traffic(production)  # a new connection for every request
    try:
        traffic.wait_more(20, "traffic before the restart")
        new = fleet.start_successor_router(old.name, "router-successor")
        wait_until(
            lambda: fleet.check_alive([new]) or _log_has(fleet, new.name, "router listening on"),
            timeout=60,
            what="the successor listens",
        )
        traffic.wait_more(10, "traffic with both routers")
        os.kill(old.proc.pid, signal.SIGTERM)
        assert old.proc.wait(timeout=30) == 0, old.log_tail()
        fleet.routers.remove(old)
        traffic.wait_more(30, "traffic after the old router left")
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    assert _log_has(fleet, new.name, "took the listening socket over")
    assert production.infer().status_code == 200
