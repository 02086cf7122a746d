"""Elastic capacity as real processes: control plane, one region's agent and its workers,
a router. Load goes up: the autoscaler asks for more workers, the agent starts them, the
router sends them traffic. Load goes down: the extra workers drain and stop, and no
request fails on the way. A model scaled to zero: the router holds its first request
while the control plane starts a worker, then serves it.

The workers are stand-ins (``bench/busy_worker.py``: 100 ms per request,
exact in-flight counts) so that a worker starts in well under a second. Every wire has
TLS from the fleet's CA, the stand-ins' too (with the certificate their agent gives them).
"""

from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.fleet import LocalFleet
from demo.geography import REGIONS
from meridian.waiting import wait_until

pytestmark = pytest.mark.slow

SITE = REGIONS[1]
BUSY = Path(__file__).resolve().parents[2] / "bench" / "busy_worker.py"
ENV = {
    "MERIDIAN_REPORT_INTERVAL_S": "0.5",
    "MERIDIAN_AUTOSCALE_TARGET_CONCURRENCY": "2",
    "MERIDIAN_AUTOSCALE_STABLE_WINDOW_S": "6",
    "MERIDIAN_AUTOSCALE_PANIC_WINDOW_S": "2",
    "MERIDIAN_AUTOSCALE_SCALE_DOWN_DELAY_S": "3",
}


class Load:
    """``clients`` threads sending requests through the router, changeable while running."""

    def __init__(self, local: LocalFleet, port: int) -> None:
        self.url = f"{local.router_url(port)}/v2/models/m/infer"
        self.verify = local.verify
        self.wanted = 0
        self.stop = threading.Event()
        self.served_by: Counter[int] = Counter()  # worker pid -> requests
        self.failures: list[str] = []
        self.lock = threading.Lock()

    def client(self, index: int) -> None:
        with httpx.Client(timeout=30, verify=self.verify) as http:
            while not self.stop.is_set():
                if index >= self.wanted:
                    time.sleep(0.02)  # an idle client (this is load shaping, not a wait)
                    continue
                r = http.post(self.url, json={"inputs": []})
                with self.lock:
                    if r.status_code == 200:
                        self.served_by[int(r.json()["pid"])] += 1
                    else:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")

    def pids_since(self, before: Counter[int]) -> set[int]:
        with self.lock:
            return {pid for pid, n in self.served_by.items() if n > before.get(pid, 0)}

    def snapshot(self) -> Counter[int]:
        with self.lock:
            return Counter(self.served_by)


def workers(local: LocalFleet, model: str = "m") -> list[dict[str, Any]]:
    snap = local.snapshot()
    region = next((r for r in snap["regions"] if r["name"] == SITE.name), None)
    found = region["workers"] if region else []
    return [w for w in found if w["worker_id"].startswith(f"{SITE.name}/{model}-")]


def routable(local: LocalFleet, model: str = "m") -> int:
    return sum(1 for w in workers(local, model) if w["state"] in ("healthy", "degraded"))


def scaling(local: LocalFleet, model: str) -> dict[str, Any]:
    auth = {"authorization": f"Bearer {local.read_token}"}
    with httpx.Client(base_url=local.base_url, headers=auth, verify=local.verify) as http:
        body = http.get("/v1/deployments", params={"model": model})
        dep_id = body.json()["items"][0]["id"]
        found: dict[str, Any] = http.get(f"/v1/deployments/{dep_id}/scaling").json()
    return found


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFleet, int]]:
    work = tmp_path_factory.mktemp("elastic")
    artifact = work / "m.onnx"
    artifact.write_bytes(b"stand-in workers do not read it")
    local = LocalFleet(work, env=ENV, ca_dir=work / "ca")
    try:
        admin = local.start_control_plane()
        credential = admin.add_region(SITE)
        http = httpx.Client(base_url=local.base_url + "/v1", timeout=10, verify=local.verify,
                            headers={"authorization": f"Bearer {local.admin_token}"})  # fmt: skip
        # m: 1 to 4 workers; z: 0 to 2 (scale to zero)
        for model, low, high in (("m", 1, 4), ("z", 0, 2)):
            admin.register_model(model, "1", artifact, dim=4)
            body = {"model": model, "version": "1", "region": SITE.name,
                    "min_replicas": low, "max_replicas": high}  # fmt: skip
            created = http.post("/deployments", json=body)
            assert created.status_code == 201, created.text
        http.close()
        admin.close()
        cred = work / "agent.credential"
        cred.write_text(credential)
        command = f"{sys.executable} {BUSY} --port {{port}} --model {{model}} " \
                  "--version {version} --delay-ms 100"  # fmt: skip
        local.agents[SITE.name] = local.children.start(
            "agent",
            ["agent", "--control-plane", f"127.0.0.1:{local.grpc_port}", "--region", SITE.name,
             "--credential-file", str(cred), "--simulate-gpus", "4", "--report-interval", "0.5",
             "--worker-command", command, *local.agent_tls_args()],
        )  # fmt: skip
        router, port = local.start_router()
        local.wait_serving({SITE.name}, timeout=60)
        local.wait_http(f"{local.router_url(port)}/v2/health/ready", router, "router ready")
        yield local, port
    finally:
        local.stop()


def test_load_up_adds_workers_that_serve_and_load_down_drains_them_without_a_failure(
    fleet: tuple[LocalFleet, int],
) -> None:
    local, port = fleet
    load = Load(local, port)
    with cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(load.client, i) for i in range(8)]
        try:
            load.wanted = 1  # ~1 request in flight: one worker is enough
            wait_until(lambda: sum(load.served_by.values()) >= 10, timeout=30, what="traffic")
            assert routable(local) == 1
            step = time.monotonic()
            load.wanted = 8  # ~8 in flight against a target of 2 per worker
            wait_until(lambda: routable(local) >= 3, timeout=30, what="new workers ready")
            scaled_s = time.monotonic() - step
            endpoints = [w["endpoint"] for w in workers(local)]
            assert all(e.startswith("https://") for e in endpoints), endpoints
            before = load.snapshot()
            wait_until(lambda: len(load.pids_since(before)) >= 3, timeout=30,
                       what="the new workers take traffic")  # fmt: skip
            load.wanted = 1  # back down: the extra workers drain and stop
            wait_until(lambda: len(workers(local)) == 1, timeout=60, what="scaled back to one")
            after = load.snapshot()
            wait_until(lambda: sum(load.snapshot().values()) >= sum(after.values()) + 10,
                       timeout=30, what="traffic after the scale-down")  # fmt: skip
        finally:
            load.stop.set()
            for f in futures:
                f.result()
    assert load.failures == []
    assert len(load.served_by) >= 3 and scaled_s < 30
    status = scaling(local, "m")
    assert status["autoscaler_running"] is True and status["desired_replicas"] == 1
    assert status["autoscaler_leading"] is True  # one replica: it leads
    reasons = [d["reason"] for d in status["decisions"]]
    assert any("panic" in r or "stable" in r for r in reasons)  # the scale-up, with its reason
    assert status["ready_after_s"] and status["ready_after_s"][-1] < 30


def test_a_model_scaled_to_zero_is_started_by_its_first_request(
    fleet: tuple[LocalFleet, int],
) -> None:
    local, port = fleet
    # z starts with one worker (no decision yet), is idle, and goes to zero
    wait_until(lambda: not workers(local, "z"), timeout=60, what="z scaled to zero")
    assert scaling(local, "z")["desired_replicas"] == 0
    started = time.monotonic()
    router = local.router_url(port)
    r = httpx.post(f"{router}/v2/models/z/infer", json={"inputs": []}, timeout=60,
                   verify=local.verify)  # fmt: skip
    held_s = time.monotonic() - started
    assert r.status_code == 200, r.text  # held while a worker started, then served
    assert held_s < 30
    ready = httpx.get(f"{router}/v2/health/ready", verify=local.verify).json()
    assert ready["cold_start_last_ms"] is not None and ready["cold_start_last_ms"] > 0
    # the autoscaler samples the snapshot once a period: it sees the worker shortly after
    wait_until(lambda: scaling(local, "z")["ready_replicas"] == 1, timeout=10, what="z ready")
    status = scaling(local, "z")
    assert status["desired_replicas"] == 1
    assert status["cold_starts_s"] and status["cold_starts_s"][0] < 30
    assert any(d["reason"].startswith("activation") for d in status["decisions"])
