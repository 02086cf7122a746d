"""The fleet the rollout tests (and ``scripts/rollout_figure.py``) run: two control-plane
replicas on PostgreSQL + etcd, three regions whose agents start stand-in workers
(``tests/e2e/canary_worker.py``: how a version behaves is set per version), a router, and
clients near every region recording which version answered each request, and when.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo.admin import Admin
from demo.fleet import LocalFleet
from demo.geography import RegionSite
from meridian.waiting import wait_until
from tests import services

CANARY = Path(__file__).resolve().parent / "canary_worker.py"
MODEL = "emb"
# the smallest region goes first by default; the sizes are their GPUs
SITES = (
    RegionSite("eu-central-1", "Frankfurt", 50.1109, 8.6821, gpus=2),
    RegionSite("ap-northeast-1", "Tokyo", 35.6762, 139.6503, gpus=3),
    RegionSite("us-east-1", "Ashburn", 39.0458, -77.4874, gpus=4),
)
# versions not named here behave well
BEHAVIOUR = {
    "fails": {"fail": 0.2},  # fails 20% of requests
    "slow": {"delay_factor": 5},  # 5x slower
    "other": {"seed": 1},  # a different model behind the same name
}
# gates scaled for seconds-long steps: enough samples, short bakes
GATES: dict[str, Any] = {
    "min_requests": 30,
    "max_error_rate_increase": 0.05,
    "max_p99_ratio": 1.6,
    "p99_slack_ms": 40.0,
    "mirror_share": 0.3,
    "min_mirrored": 20,
    "max_drift": 0.05,
    "ready_timeout_s": 60,
}
STEPS = [0.1, 0.5, 1.0]
BAKE_S = 2.0


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic()
    site: str  # the region the client is near
    status: int
    version: str  # the version that answered ("" for a failure)
    region: str  # the region that answered
    error: str = ""  # why no answer came (status 0)


@dataclass
class RolloutFleet:
    fleet: LocalFleet
    router_port: int
    work: Path
    versions: list[str] = field(default_factory=lambda: ["1"])

    @property
    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.fleet.base_url + "/v1",
            headers={"authorization": f"Bearer {self.fleet.admin_token}"},
            timeout=10,
        )

    def add_version(self, version: str) -> None:
        artifact = self.work / "stand-in.onnx"
        with self.admin as http:
            text = {"name": "text", "datatype": "BYTES", "shape": [-1]}
            vector = {"name": "embedding", "datatype": "FP32", "shape": [-1, 16]}
            body = {"version": version, "format": "onnx", "inputs": [text], "outputs": [vector]}
            r = http.post(f"/models/{MODEL}/versions", json=body)
            assert r.status_code == 201, r.text
        admin = Admin(self.fleet.base_url, self.fleet.admin_token)
        try:
            admin.upload(f"/models/{MODEL}/versions/{version}/artifact", artifact)
        finally:
            admin.close()
        self.versions.append(version)

    def create(self, from_version: str, to_version: str, **extra: Any) -> dict[str, Any]:
        body = {"model": MODEL, "from_version": from_version, "to_version": to_version,
                "steps": STEPS, "bake_s": BAKE_S, "gates": GATES, **extra}  # fmt: skip
        with self.admin as http:
            r = http.post("/rollouts", json=body)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    def rollout(self, rollout_id: int) -> dict[str, Any]:
        for _ in range(3):  # a replica may be going away under the test
            try:
                with self.admin as http:
                    r = http.get(f"/rollouts/{rollout_id}")
                if r.status_code == 200:
                    found: dict[str, Any] = r.json()
                    return found
            except httpx.HTTPError:
                pass
        raise AssertionError(f"rollout {rollout_id} could not be read")

    def deployments(self) -> list[dict[str, Any]]:
        with self.admin as http:
            r = http.get("/deployments", params={"model": MODEL})
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def audit(self, rollout_id: int) -> list[dict[str, Any]]:
        with self.admin as http:
            r = http.get("/audit", params={"entity": "rollout", "entity_key": str(rollout_id),
                                           "limit": 500})  # fmt: skip
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def leader(self) -> str | None:
        for replica in self.fleet.replicas:
            if not replica.child.alive():
                continue
            try:
                auth = {"authorization": f"Bearer {self.fleet.read_token}"}
                r = httpx.get(f"{replica.url}/v1/fleet/status", timeout=2, headers=auth)
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and r.json()["leader"]:
                return replica.url
        return None


class Clients:
    """``per_site`` clients near each region sending requests until stopped."""

    def __init__(self, port: int, per_site: int = 3) -> None:
        self.url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        n = per_site * len(SITES)
        self._pool = cf.ThreadPoolExecutor(n)
        self._futures = [self._pool.submit(self._client, SITES[i % len(SITES)]) for i in range(n)]

    def _client(self, site: RegionSite) -> None:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
        headers = {"x-meridian-client-location": f"{site.lat},{site.lon}"}
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self._stop.is_set():
                i += 1
                body["inputs"][0]["data"] = [f"{site.name} {i}"]
                try:
                    r = http.post(self.url, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    self.answers.append(Answer(time.monotonic(), site.name, 0, "", "", repr(exc)))
                    self._stop.wait(0.05)  # a client backs off a little after an error
                    continue
                version = r.json().get("model_version", "") if r.status_code == 200 else ""
                region = r.headers.get("x-meridian-region", "")
                self.answers.append(Answer(time.monotonic(), site.name, r.status_code,
                                           version, region))  # fmt: skip

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]

    def wait_more(self, n: int, timeout: float = 60) -> None:
        target = len(self.answers) + n
        wait_until(lambda: len(self.answers) >= target, timeout=timeout, what=f"{n} answers")

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


def _start_agent(fleet: LocalFleet, site: RegionSite, credential: str) -> None:
    cred = fleet.workdir / f"{site.name}.credential"
    cred.write_text(credential)
    cred.chmod(0o600)
    command = (f"{sys.executable} {CANARY} --port {{port}} --model {{model}} "
               "--version {version}")  # fmt: skip
    fleet.agents[site.name] = fleet.children.start(
        f"agent-{site.name}",
        ["agent", "--control-plane", ",".join(f"127.0.0.1:{r.grpc_port}" for r in fleet.replicas),
         "--region", site.name, "--credential-file", str(cred), "--insecure",
         "--simulate-gpus", str(site.gpus), "--report-interval", "0.3",
         "--worker-command", command],
    )  # fmt: skip


@contextmanager
def rollout_fleet(work: Path, *, replicas: int = 2) -> Iterator[RolloutFleet]:
    """The whole fleet on a fresh PostgreSQL database and etcd namespace; stopped after."""
    etcd = services.require_etcd()
    namespace = f"/rollouts-{uuid.uuid4().hex[:8]}"
    artifact = work / "stand-in.onnx"
    artifact.write_bytes(b"stand-in workers do not read it")
    env = {
        "MERIDIAN_REPORT_INTERVAL_S": "0.3",
        "MERIDIAN_ROLLOUT_INTERVAL_S": "0.25",
        "MERIDIAN_ROUTER_FIGURES_INTERVAL_S": "0.5",
        "MERIDIAN_CANARY_BEHAVIOUR": json.dumps(BEHAVIOUR),
    }
    with services.fresh_postgres_database() as db_url:
        fleet = LocalFleet(work, env=env)
        cp_env = {
            "MERIDIAN_DATABASE_URL": db_url,
            "MERIDIAN_COORDINATION_URL": f"etcd://{etcd}",
            "MERIDIAN_FLEET_NAMESPACE": namespace,
        }
        try:
            admin = fleet.start_control_plane(cp_env)
            for _ in range(replicas - 1):
                fleet.start_control_plane(cp_env).close()
            admin.register_model(MODEL, "1", artifact, dim=16)
            auth = {"authorization": f"Bearer {fleet.admin_token}"}
            http = httpx.Client(base_url=fleet.base_url + "/v1", timeout=10, headers=auth)
            for site in SITES:
                credential = admin.add_region(site)
                body = {"model": MODEL, "version": "1", "region": site.name,
                        "min_replicas": 1, "max_replicas": 1}  # fmt: skip
                created = http.post("/deployments", json=body)
                assert created.status_code == 201, created.text
                _start_agent(fleet, site, credential)
            http.close()
            admin.close()
            _, port = fleet.start_router(
                etcd=etcd, env={"MERIDIAN_ROUTER_SNAPSHOT_KEY": f"{namespace}/routing/snapshot"}
            )
            fleet.wait_serving({s.name for s in SITES}, timeout=120)
            yield RolloutFleet(fleet, port, work)
        finally:
            fleet.stop()
