"""The production-mode fleet the end-to-end tests share, and the traffic they run through it.

Two control-plane replicas on PostgreSQL + etcd, two regions (agents and real workers), a
router following etcd and both replicas (its rate limits in Redis when given). Every wire
is encrypted with the fleet's own CA: the admin API and the router serve HTTPS, agents
stream over mutual TLS, workers answer the router's certificate only. Test modules build
their module-scoped fixture with :func:`production_fleet`.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from demo.admin import Admin
from demo.fleet import LocalFleet
from demo.geography import REGIONS
from meridian.waiting import wait_until
from region_agent.tls import AgentCertificate, AgentTLS
from tests import services
from tests.worker.text_model import DIM, build_text_model

SITES = (REGIONS[0], REGIONS[1])  # us-east-1, eu-central-1
NEW_YORK = "40.7,-74.0"
TEXT = "fast inference across regions"


def infer_body() -> dict[str, object]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}


@dataclass
class Production:
    fleet: LocalFleet
    router_port: int
    table: np.ndarray
    api_key: str
    etcd: str = ""
    namespace: str = ""
    cp_env: dict[str, str] = field(default_factory=dict)
    models_written: list[str] = field(default_factory=list)

    @property
    def router_url(self) -> str:
        return self.fleet.router_url(self.router_port)

    def infer(
        self, location: str = NEW_YORK, api_key: str | None = None, timeout: float = 30
    ) -> httpx.Response:
        return httpx.post(
            f"{self.router_url}/v2/models/tiny/infer",
            json=infer_body(),
            headers={"x-meridian-client-location": location, "x-api-key": api_key or self.api_key},
            timeout=timeout,
            verify=self.fleet.verify,
        )

    def status(self, url: str) -> dict[str, object] | None:
        try:
            r = httpx.get(
                f"{url}/v1/fleet/status",
                headers={"authorization": f"Bearer {self.fleet.read_token}"},
                timeout=2,
                verify=self.fleet.verify,
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

    def admin(self) -> Admin:
        """An admin client of the first live replica (close it after use)."""
        return Admin(self.fleet.base_url, self.fleet.admin_token, verify=self.fleet.verify)

    def admin_write(self) -> None:
        """Create a model through any live replica; remember it once acknowledged."""
        name = f"m{uuid.uuid4().hex[:8]}"
        admin = self.admin()
        try:
            admin._ok(admin._http.post("/models", json={"name": name}))
        finally:
            admin.close()
        self.models_written.append(name)

    def try_admin_write(self, timeout: float = 10) -> bool:
        """One admin write that is either acknowledged (True, remembered) or refused with an
        explicit error or no connection (False); never left unanswered past ``timeout``."""
        name = f"m{uuid.uuid4().hex[:8]}"
        try:
            r = httpx.post(
                f"{self.fleet.base_url}/v1/models",
                json={"name": name},
                headers={"authorization": f"Bearer {self.fleet.admin_token}"},
                timeout=timeout,
                verify=self.fleet.verify,
            )
        except httpx.TimeoutException:
            raise AssertionError(f"an admin write was not answered within {timeout} s") from None
        except httpx.HTTPError:
            return False
        if r.is_success:
            self.models_written.append(name)
            return True
        assert r.status_code >= 400 and r.text, "a refused write says why"
        return False

    def models_present(self) -> set[str]:
        r = httpx.get(
            f"{self.fleet.base_url}/v1/models",
            params={"limit": 500},
            headers={"authorization": f"Bearer {self.fleet.admin_token}"},
            timeout=10,
            verify=self.fleet.verify,
        )
        r.raise_for_status()
        return {m["name"] for m in r.json()["items"]}

    def writes_present(self) -> tuple[int, int]:
        """(acknowledged, present) among every admin write acknowledged so far."""
        present = self.models_present()
        return len(self.models_written), len(set(self.models_written) & present)


@dataclass(frozen=True)
class Answer:
    at: float  # time.monotonic() when the answer arrived
    region: str
    attempts: int


class Traffic:
    """Clients sending requests until stopped; every non-200 is recorded, every 200 kept
    with when it arrived, which region served it and after how many attempts."""

    def __init__(self, prod: Production, clients: int = 3) -> None:
        self.prod = prod
        self.served: Counter[str] = Counter()
        self.answers: list[Answer] = []
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
                region = r.headers["x-meridian-region"]
                attempts = int(r.headers.get("x-meridian-attempts", "1"))
                self.answers.append(Answer(time.monotonic(), region, attempts))
                self.served[region] += 1
            else:
                self.failures.append(f"{r.status_code} {r.text}")

    def total(self) -> int:
        return sum(self.served.values())

    def wait_more(self, n: int, what: str, timeout: float = 60) -> None:
        target = self.total() + n
        wait_until(lambda: self.total() >= target, timeout=timeout, what=what)

    def time_to_leave(self, since: float, broken: Callable[[Answer], bool]) -> float:
        """Seconds from ``since`` until the last answer that touched the broken part (served
        by it, or retried past it); 0.0 when none did."""
        touched = [a.at for a in list(self.answers) if a.at >= since and broken(a)]
        return max(touched) - since if touched else 0.0

    def stop(self) -> None:
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


def steady(prod: Production, event: Callable[[], None], what: str) -> Traffic:
    """Run ``event`` under traffic; no request may fail, before, during or after."""
    traffic = Traffic(prod)
    try:
        traffic.wait_more(10, "traffic before " + what)
        event()
        traffic.wait_more(20, "traffic after " + what)
    finally:
        traffic.stop()
    assert traffic.failures == [], traffic.failures[:5]
    return traffic


def worker_port(pid: int) -> int | None:
    """The HTTP port of a live ``meridian worker`` process, None if ``pid`` is not one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    if "worker" not in argv or "--http-port" not in argv:
        return None
    return int(argv[argv.index("--http-port") + 1])


def workers_on(ports: list[int]) -> list[int]:
    """The pids of the live worker processes listening on ``ports``."""
    return [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and worker_port(int(entry.name)) in ports
    ]


def reported_endpoints(fleet: LocalFleet, region: str) -> list[str]:
    """The HTTP endpoints (scheme, host, port) of ``region``'s workers, as its agent reports."""
    snap = fleet.snapshot()
    workers = next(r["workers"] for r in snap["regions"] if r["name"] == region)
    return [str(w["endpoint"]) for w in workers]


def reported_ports(fleet: LocalFleet, region: str) -> list[int]:
    return [int(e.rsplit(":", 1)[1]) for e in reported_endpoints(fleet, region)]


def credential_of(fleet: LocalFleet, region: str) -> str:
    """The agent credential ``region`` was registered with (the fleet keeps it on file)."""
    return (fleet.workdir / f"{region}.credential").read_text().strip()


async def enrolled_agent(fleet: LocalFleet, region: str) -> AgentCertificate:
    """A genuine agent certificate for ``region``, enrolled with its credential as its agent
    would (beside the running agent's own, which it does not disturb)."""
    assert fleet.ca_file is not None, "the fleet runs without TLS"
    enroll = [f"127.0.0.1:{r.enroll_port}" for r in fleet.replicas if r.child.alive()]
    tls = AgentTLS(fleet.ca_file.read_bytes(), enroll)
    certificate = AgentCertificate(tls, region, credential_of(fleet, region))
    await certificate.enroll()
    return certificate


def write_pair(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> tuple[str, str]:
    """``cert_pem`` and ``key_pem`` as files (the key 0600): their paths."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert.write_bytes(cert_pem)
    key.touch(mode=0o600)
    key.write_bytes(key_pem)
    return str(cert), str(key)


@contextmanager
def production_fleet(
    work: Path, *, etcd: str, label: str, redis_url: str | None = None
) -> Iterator[Production]:
    """Start the whole fleet in ``work`` on a fresh PostgreSQL database, with its CA in
    ``work/ca``; stop it after."""
    table = build_text_model(work / "tiny.onnx")
    namespace = f"/e2e-{label}-{uuid.uuid4().hex[:8]}"
    with services.fresh_postgres_database() as db_url:
        fleet = LocalFleet(work, env={"MERIDIAN_REPORT_INTERVAL_S": "0.5"}, ca_dir=work / "ca")
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
            api_key = admin.api_key(f"{label}-clients", rate_per_s=10_000, burst=10_000)
            admin.close()
            router_env = {
                "MERIDIAN_ROUTER_SNAPSHOT_KEY": f"{namespace}/routing/snapshot",
                "MERIDIAN_ROUTER_KEYRING_KEY": f"{namespace}/routing/api-keys",
            }
            if redis_url is not None:
                router_env["MERIDIAN_ROUTER_REDIS_URL"] = redis_url
            _, port = fleet.start_router(etcd=etcd, require_api_key=True, env=router_env)
            fleet.wait_serving({s.name for s in SITES}, timeout=180)
            prod = Production(fleet, port, table, api_key, etcd, namespace, cp_env)
            wait_until(lambda: prod.infer().status_code == 200, timeout=30, what="router serves")
            yield prod
        finally:
            fleet.stop()
