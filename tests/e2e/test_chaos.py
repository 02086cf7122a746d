"""Chaos under steady traffic through the router, with real processes: a worker killed
(``kill -9``), etcd stopped for a few seconds, the router restarted while the whole control
plane is down. (The leader and a whole region are killed in ``test_production``.)

Each asserts that no user request failed, how long traffic took to leave the broken part,
and that every admin write acknowledged during the fault is there afterwards. The module
owns its etcd, so that stopping it touches no other test.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from meridian.waiting import wait_until
from tests import services
from tests.e2e.production import (
    SITES,
    Production,
    Traffic,
    production_fleet,
    reported_ports,
    steady,
    workers_on,
)

pytestmark = pytest.mark.slow

LEAVE_BOUND_S = 2.0  # traffic must be off a dead worker within this


@pytest.fixture(scope="module")
def etcd_server() -> Iterator[services.EtcdServer]:
    binary = shutil.which("etcd")
    if binary is None:
        services.unavailable("etcd", "no etcd binary on the PATH (apt-get install etcd-server)")
    server = services.EtcdServer(binary)
    try:
        server.start()
        yield server
    finally:
        if server.pid is not None:  # never leave it stopped
            os.kill(server.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture(scope="module")
def chaos(
    tmp_path_factory: pytest.TempPathFactory, etcd_server: services.EtcdServer
) -> Iterator[Production]:
    work = tmp_path_factory.mktemp("chaos")
    with production_fleet(work, etcd=etcd_server.endpoint, label="chaos") as prod:
        yield prod


def test_kill_9_a_worker(chaos: Production) -> None:
    region = SITES[0].name  # New York's nearest: it serves this traffic
    ports = reported_ports(chaos.fleet, region)
    victims = workers_on(ports[:1])
    assert victims, f"a worker of {region} listens on {ports[:1]}"
    killed: list[float] = []

    def kill() -> None:
        killed.append(time.monotonic())
        os.kill(victims[0], signal.SIGKILL)

    traffic = steady(chaos, kill, f"killing a worker of {region}")
    # a request that met the dead worker was retried; with the region's only worker dead,
    # the region itself has no one left to serve
    alone = len(ports) == 1
    left = traffic.time_to_leave(
        killed[0], lambda a: a.attempts > 1 or (alone and a.region == region)
    )
    print(f"worker killed: 0 failed of {traffic.total()}, traffic left in {left:.2f} s"
          f" ({len(ports)} worker(s) in {region})")  # fmt: skip
    assert left < LEAVE_BOUND_S, f"traffic met the dead worker {left:.2f} s after its death"


def test_etcd_stopped_for_three_seconds(
    chaos: Production, etcd_server: services.EtcdServer
) -> None:
    pid = etcd_server.pid
    assert pid is not None
    tried: list[bool] = []
    outage = threading.Event()

    def writer() -> None:  # admin writes all through the outage
        while outage.is_set():
            tried.append(chaos.try_admin_write(timeout=15))

    def stop_etcd() -> None:
        os.kill(pid, signal.SIGSTOP)
        outage.set()
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:  # traffic keeps flowing meanwhile
                chaos.infer(timeout=10).raise_for_status()
        finally:
            os.kill(pid, signal.SIGCONT)
            outage.clear()
            thread.join(timeout=30)

    traffic = steady(chaos, stop_etcd, "stopping etcd")
    wait_until(etcd_server.healthy, timeout=15, what="etcd answers again")
    wait_until(chaos.try_admin_write, timeout=30, what="admin writes after etcd's return")
    acked, present = chaos.writes_present()
    refused = len(tried) - sum(tried)
    print(f"etcd stopped 3 s: 0 failed of {traffic.total()}; writes during it: {sum(tried)}"
          f" acked, {refused} refused; acked {acked} present {present}")  # fmt: skip
    assert tried, "admin writes were tried during the outage"
    assert present == acked


def test_router_restart_with_the_control_plane_down(chaos: Production) -> None:
    fleet = chaos.fleet
    for replica in fleet.replicas:
        replica.child.kill_group()
    assert not chaos.try_admin_write(timeout=5), "no control plane: the write is refused"
    old = fleet.routers[0]
    os.kill(old.proc.pid, signal.SIGTERM)
    assert old.proc.wait(timeout=30) == 0, old.log_tail()
    fleet.routers.remove(old)
    started = time.monotonic()
    new = fleet.start_successor_router(old.name, "router-without-control-plane")

    def ready() -> bool:
        fleet.check_alive([new])
        try:
            return chaos.infer(timeout=5).status_code == 200
        except Exception:
            return False

    wait_until(ready, timeout=60, interval=0.1, what="the new router serves")
    ready_after = time.monotonic() - started
    traffic = Traffic(chaos)
    try:
        traffic.wait_more(40, "traffic through the restarted router")
    finally:
        traffic.stop()
    print(
        f"router restarted with the control plane down: ready in {ready_after:.1f} s,"
        f" {len(traffic.failures)} failed of {traffic.total()}, served by {dict(traffic.served)}"
    )
    assert traffic.failures == [], traffic.failures[:5]
    assert set(traffic.served) <= {s.name for s in SITES}
