"""Production mode end to end: two control-plane replicas on PostgreSQL + etcd, a router
following etcd and both replicas with its rate limits in Redis, two regions.

With traffic flowing: kill the control-plane leader, restart PostgreSQL, kill a region.
After each, every request was answered and every acknowledged admin write is still there.
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from demo.admin import Admin
from demo.fleet import LocalFleet
from demo.geography import REGIONS
from meridian.waiting import wait_until
from tests import services
from tests.worker.text_model import DIM, build_text_model, reference

pytestmark = pytest.mark.slow

SITES = (REGIONS[0], REGIONS[1])  # us-east-1, eu-central-1
NEW_YORK = "40.7,-74.0"
TEXT = "fast inference across regions"


@dataclass
class Production:
    fleet: LocalFleet
    router_port: int
    table: np.ndarray
    api_key: str
    models_written: list[str] = field(default_factory=list)

    def infer(self, location: str = NEW_YORK, api_key: str | None = None) -> httpx.Response:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
        return httpx.post(
            f"http://127.0.0.1:{self.router_port}/v2/models/tiny/infer",
            json=body,
            headers={"x-meridian-client-location": location, "x-api-key": api_key or self.api_key},
            timeout=30,
        )

    def status(self, url: str) -> dict[str, object] | None:
        try:
            r = httpx.get(
                f"{url}/v1/fleet/status",
                headers={"authorization": f"Bearer {self.fleet.read_token}"},
                timeout=2,
            )
        except httpx.HTTPError:
            return None
        return r.json() if r.status_code == 200 else None

    def leader(self) -> str | None:
        for replica in self.fleet.replicas:
            if replica.child.alive():
                st = self.status(replica.url)
                if st and st["leader"]:
                    return replica.url
        return None

    def admin_write(self) -> None:
        """Create a model through any live replica; remember it once acknowledged."""
        name = f"m{uuid.uuid4().hex[:8]}"
        admin = Admin(self.fleet.base_url, self.fleet.admin_token)
        try:
            admin._ok(admin._http.post("/models", json={"name": name}))
        finally:
            admin.close()
        self.models_written.append(name)

    def models_present(self) -> set[str]:
        r = httpx.get(
            f"{self.fleet.base_url}/v1/models",
            params={"limit": 500},
            headers={"authorization": f"Bearer {self.fleet.admin_token}"},
            timeout=10,
        )
        r.raise_for_status()
        return {m["name"] for m in r.json()["items"]}


class Traffic:
    """Clients sending requests until stopped; every non-200 is recorded."""

    def __init__(self, prod: Production, clients: int = 3) -> None:
        self.prod = prod
        self.served: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._pool = cf.ThreadPoolExecutor(clients)
        self._futures = [self._pool.submit(self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self._stop.is_set():
            try:
                r = self.prod.infer()
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                continue
            if r.status_code == 200:
                self.served[r.headers["x-meridian-region"]] += 1
            else:
                self.failures.append(f"{r.status_code} {r.text}")

    def total(self) -> int:
        return sum(self.served.values())

    def wait_more(self, n: int, what: str, timeout: float = 60) -> None:
        target = self.total() + n
        wait_until(lambda: self.total() >= target, timeout=timeout, what=what)

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    etcd = services.require_etcd()
    redis_url = services.require_redis()
    work = tmp_path_factory.mktemp("production")
    table = build_text_model(work / "tiny.onnx")
    namespace = f"/e2e-{uuid.uuid4().hex[:8]}"
    with services.fresh_postgres_database() as db_url:
        fleet = LocalFleet(work, env={"MERIDIAN_REPORT_INTERVAL_S": "0.5"})
        cp_env = {
            "MERIDIAN_DATABASE_URL": db_url,
            "MERIDIAN_COORDINATION_URL": f"etcd://{etcd}",
            "MERIDIAN_FLEET_NAMESPACE": namespace,
        }
        try:
            admin = fleet.start_control_plane(cp_env)
            fleet.start_control_plane(cp_env).close()
            admin.register_model("tiny", "1", work / "tiny.onnx", dim=DIM)
            for site in SITES:
                fleet.add_region(admin, site, [("tiny", "1", None)])
            api_key = admin.api_key("production-clients", rate_per_s=10_000, burst=10_000)
            admin.close()
            _, port = fleet.start_router(
                etcd=etcd,
                require_api_key=True,
                env={
                    "MERIDIAN_ROUTER_SNAPSHOT_KEY": f"{namespace}/routing/snapshot",
                    "MERIDIAN_ROUTER_KEYRING_KEY": f"{namespace}/routing/api-keys",
                    "MERIDIAN_ROUTER_REDIS_URL": redis_url,
                },
            )
            fleet.wait_serving({s.name for s in SITES}, timeout=180)
            prod = Production(fleet, port, table, api_key)
            wait_until(lambda: prod.infer().status_code == 200, timeout=30, what="router serves")
            yield prod
        finally:
            fleet.stop()


def _steady(prod: Production, event: Callable[[], None], what: str) -> None:
    """Run ``event`` under traffic; no request may fail, before, during or after."""
    traffic = Traffic(prod)
    try:
        traffic.wait_more(10, "traffic before " + what)
        event()
        traffic.wait_more(20, "traffic after " + what)
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]


def test_tritonclient_through_the_router(production: Production) -> None:
    import tritonclient.http as http

    client = http.InferenceServerClient(f"127.0.0.1:{production.router_port}")
    inp = http.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXT.encode()], dtype=np.object_))
    out = client.infer("tiny", [inp], headers={"x-api-key": production.api_key}).as_numpy(
        "embedding"
    )
    np.testing.assert_allclose(out[0], reference(production.table, TEXT), rtol=1e-5, atol=1e-6)
    production.admin_write()


def test_killing_the_control_plane_leader(production: Production) -> None:
    wait_until(production.leader, timeout=15, what="a leader")
    leader = production.leader()
    victim = next(r for r in production.fleet.replicas if r.url == leader)
    _steady(production, victim.child.kill_group, "killing the leader")
    survivor = next(r for r in production.fleet.replicas if r is not victim)
    wait_until(
        lambda: (production.status(survivor.url) or {}).get("leader") is True,
        timeout=15,
        what="the other replica takes over",
    )
    production.admin_write()
    assert set(production.models_written) <= production.models_present()


def test_restarting_postgresql(production: Production) -> None:
    ctl = shutil.which("pg_ctlcluster")
    versions = sorted(Path("/etc/postgresql").glob("*")) if Path("/etc/postgresql").exists() else []
    if ctl is None or not versions:
        services.unavailable("pg_ctlcluster", "cannot restart PostgreSQL on this machine")

    def restart() -> None:
        subprocess.run(
            [ctl or "pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main",
             "restart"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        wait_until(
            lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"]).returncode == 0,
            timeout=60,
            what="PostgreSQL back",
        )

    _steady(production, restart, "restarting PostgreSQL")

    def write_ok() -> bool:
        try:
            production.admin_write()
        except (RuntimeError, httpx.HTTPError):
            return False
        return True

    wait_until(write_ok, timeout=30, what="admin writes after the restart")
    assert set(production.models_written) <= production.models_present()


def test_killing_a_region(production: Production) -> None:
    agents = production.fleet.agents
    _steady(production, agents["us-east-1"].kill_group, "killing us-east-1")
    wait_until(
        lambda: "us-east-1" not in production.fleet.serving_regions(),
        timeout=15,
        what="us-east-1 leaves routing",
    )
    r = production.infer()
    assert r.status_code == 200 and r.headers["x-meridian-region"] == "eu-central-1"
    assert set(production.models_written) <= production.models_present()


def test_keys_issued_and_revoked_after_the_leader_changed(production: Production) -> None:
    # by now the first leader was killed: the keyring's versions continue on the new one
    admin = Admin(production.fleet.base_url, production.fleet.admin_token)
    try:
        key = admin.api_key("late-client", rate_per_s=100, burst=100)
        wait_until(lambda: production.infer(api_key=key).status_code == 200,
                   timeout=10, what="the new key accepted")  # fmt: skip
        admin.revoke_api_key("late-client")
        wait_until(lambda: production.infer(api_key=key).status_code == 401,
                   timeout=10, what="the revoked key refused")  # fmt: skip
    finally:
        admin.close()
    assert production.infer().status_code == 200
