"""The whole control plane down and back, with real processes under steady traffic.

Two control-plane replicas on PostgreSQL + etcd, two regions (agents and real
workers), a router following etcd and both replicas. Both replicas are killed, stay
down until etcd has forgotten every region's summary, and start again on the same
ports. No request may fail: first with the control plane's reconnect grace (the new
leader publishes no region down, and the router never has to distrust a snapshot),
then with the grace off (the new leader publishes every region down before the agents
are back, and the router keeps its last good view of the model and says so).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from meridian.coordination import open_coordination
from meridian.snapshot import RoutingSnapshot
from meridian.waiting import wait_until
from tests import services
from tests.e2e.production import SITES, Production, Traffic, production_fleet

pytestmark = pytest.mark.slow


@dataclass
class Outage:
    prod: Production
    etcd: str
    namespace: str
    cp_env: dict[str, str]

    def kill_control_plane(self) -> None:
        for replica in self.prod.fleet.replicas:
            replica.child.kill_group()

    def summaries_left(self) -> int:
        async def count() -> int:
            coord = open_coordination(f"etcd://{self.etcd}")
            try:
                items, _ = await coord.get_prefix(f"{self.namespace}/fleet/regions/")
            finally:
                await coord.close()
            return len(items)

        return asyncio.run(count())

    def snapshot_version(self) -> int:
        async def read() -> int:
            coord = open_coordination(f"etcd://{self.etcd}")
            try:
                kv = await coord.get(f"{self.namespace}/routing/snapshot")
            finally:
                await coord.close()
            return RoutingSnapshot.from_json(kv.value).version if kv is not None else 0

        return asyncio.run(read())

    def restart_control_plane(self, env: dict[str, str]) -> None:
        fleet = self.prod.fleet
        restarted = [  # same ports, same TLS
            fleet.restart_replica(i, f"control-plane-restarted-{i + 1}", {**self.cp_env, **env})
            for i in range(len(fleet.replicas))
        ]
        for replica in restarted:
            fleet.wait_http(f"{replica.url}/healthz", replica.child, replica.child.name)

    def router_metric(self, name: str) -> float:
        text = httpx.get(
            f"{self.prod.router_url}/metrics", timeout=5, verify=self.prod.fleet.verify
        ).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in the router's /metrics")

    def pause_agents(self, sig: signal.Signals) -> None:
        """Stop or continue the agents themselves (their workers go on serving)."""
        for agent in self.prod.fleet.agents.values():
            os.kill(agent.proc.pid, sig)

    def run(self, env: dict[str, str], *, agents_late: bool = False) -> Traffic:
        """Kill both replicas under traffic, wait out the summaries, restart them; traffic
        goes on until the agents are back and the grace is over. With ``agents_late`` the
        agents are held until the new leader has published, so that it publishes before
        they are back whatever the machine's speed."""
        traffic = Traffic(self.prod)
        try:
            traffic.wait_more(10, "traffic before the outage")
            before = self.snapshot_version()
            self.kill_control_plane()
            wait_until(lambda: self.summaries_left() == 0, timeout=30, what="summaries lapse")
            traffic.wait_more(10, "traffic during the outage")
            if agents_late:
                self.pause_agents(signal.SIGSTOP)
            try:
                self.restart_control_plane(env)
                wait_until(lambda: self.prod.leader(), timeout=30, what="a new leader")
                wait_until(lambda: self.snapshot_version() > before, timeout=30,
                           what="it publishes")  # fmt: skip
                if agents_late:
                    traffic.wait_more(10, "traffic while the agents are away")
            finally:
                if agents_late:
                    self.pause_agents(signal.SIGCONT)
            wait_until(lambda: self.summaries_left() >= len(SITES), timeout=30,
                       what="the agents are back")  # fmt: skip
            traffic.wait_more(40, "traffic after the outage")  # past the grace (6 s) too
        finally:
            traffic.stop()
        return traffic


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    work = tmp_path_factory.mktemp("outage")
    etcd = services.require_etcd()
    with production_fleet(work, etcd=etcd, label="outage") as prod:
        yield Outage(prod, etcd, prod.namespace, prod.cp_env)


def test_a_control_plane_back_from_an_outage_keeps_the_fleet_in_routing(outage: Outage) -> None:
    traffic = outage.run({})  # the default grace
    assert traffic.failures == [], traffic.failures[:5]
    assert outage.router_metric("meridian_router_snapshot_panics_total") == 0


def test_without_the_grace_the_router_distrusts_an_all_down_snapshot(outage: Outage) -> None:
    traffic = outage.run({"MERIDIAN_RECONNECT_GRACE_S": "0"}, agents_late=True)
    assert traffic.failures == [], traffic.failures[:5]
    assert outage.router_metric("meridian_router_snapshot_panics_total") >= 1
    # the agents are back: the router routes on the control plane's word again
    wait_until(
        lambda: outage.router_metric("meridian_router_models_on_last_good_snapshot") == 0,
        timeout=15,
        what="the model leaves the last good view",
    )
