"""The loopback half of ``bench.autoscale``: a real control plane, agent, workers and router.

One region runs ``bench/busy_worker.py`` stand-ins (100 ms per request) under the
real autoscaler (target 2 in flight per worker, stable 6 s, panic 2 s, scale-down
delay 3 s). Clients step from 1 to 8 concurrent and back: it measures the time from
the step until a new worker serves, worker-seconds against holding the peak for
the whole run, failed requests, and a cold start from zero through the router's hold.
"""

from __future__ import annotations

import itertools
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from demo.fleet import LocalFleet
from demo.geography import REGIONS
from meridian.waiting import wait_until

BUSY = Path(__file__).resolve().with_name("busy_worker.py")
SITE = REGIONS[1]
ENV = {
    "MERIDIAN_REPORT_INTERVAL_S": "0.5",
    "MERIDIAN_AUTOSCALE_TARGET_CONCURRENCY": "2",
    "MERIDIAN_AUTOSCALE_STABLE_WINDOW_S": "6",
    "MERIDIAN_AUTOSCALE_PANIC_WINDOW_S": "2",
    "MERIDIAN_AUTOSCALE_SCALE_DOWN_DELAY_S": "3",
}


@dataclass
class RealResult:
    step_to_new_worker_serving_s: float
    worker_seconds: float
    static_peak_worker_seconds: float
    peak_workers: int
    requests: int
    failed: int
    cold_start_s: float


def _start(work: Path) -> tuple[LocalFleet, int]:
    artifact = work / "m.onnx"
    artifact.write_bytes(b"stand-in workers do not read it")
    local = LocalFleet(work, env=ENV)
    admin = local.start_control_plane()
    credential = admin.add_region(SITE)
    auth = {"authorization": f"Bearer {local.admin_token}"}
    with httpx.Client(base_url=local.base_url + "/v1", timeout=10, headers=auth) as http:
        for model, low, high in (("m", 1, 6), ("z", 0, 1)):
            admin.register_model(model, "1", artifact, dim=4)
            body = {"model": model, "version": "1", "region": SITE.name,
                    "min_replicas": low, "max_replicas": high}  # fmt: skip
            http.post("/deployments", json=body).raise_for_status()
    admin.close()
    cred = work / "agent.credential"
    cred.write_text(credential)
    command = f"{sys.executable} {BUSY} --port {{port}} --model {{model}} --version {{version}}"
    local.agents[SITE.name] = local.children.start(
        "agent",
        ["agent", "--control-plane", f"127.0.0.1:{local.grpc_port}", "--region", SITE.name,
         "--credential-file", str(cred), "--simulate-gpus", "8", "--report-interval", "0.5",
         "--worker-command", command + " --delay-ms 100"],
    )  # fmt: skip
    router, port = local.start_router()
    local.wait_serving({SITE.name}, timeout=60)
    local.wait_http(f"http://127.0.0.1:{port}/v2/health/ready", router, "router ready")
    return local, port


def _serving(local: LocalFleet, model: str) -> int:
    try:
        snap = local.snapshot()
    except (httpx.HTTPError, ValueError):
        return -1
    empty: dict[str, Any] = {"workers": []}
    region: dict[str, Any] = next((r for r in snap["regions"] if r["name"] == SITE.name), empty)
    prefix = f"{SITE.name}/{model}-"  # worker ids: region/model-version-variant-n
    return sum(1 for w in region["workers"]
               if w["worker_id"].startswith(prefix) and w["state"] == "healthy")  # fmt: skip


def run(quick: bool) -> RealResult:
    with tempfile.TemporaryDirectory(prefix="meridian-elastic-") as tmp:
        local, port = _start(Path(tmp))
        try:
            return _measure(local, port, hold_s=6.0 if quick else 20.0)
        finally:
            local.stop()


def _measure(local: LocalFleet, port: int, hold_s: float) -> RealResult:
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"
    wanted = [1]
    stop = threading.Event()
    lock = threading.Lock()
    pids: dict[int, float] = {}  # worker pid -> first time it answered
    counts = {"ok": 0, "failed": 0}

    def client(index: int) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                if index >= wanted[0]:
                    time.sleep(0.02)  # idle client: load shaping
                    continue
                r = http.post(url, json={"inputs": []})
                with lock:
                    if r.status_code == 200:
                        counts["ok"] += 1
                        pids.setdefault(int(r.json()["pid"]), time.monotonic())
                    else:
                        counts["failed"] += 1

    samples: list[tuple[float, int]] = []

    def sampler() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), _serving(local, "m")))
            stop.wait(0.25)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    try:
        began = time.monotonic()
        wait_until(lambda: counts["ok"] >= 20, timeout=30, what="traffic")
        known = set(pids)
        step = time.monotonic()
        wanted[0] = 8
        wait_until(lambda: set(pids) - known, timeout=60, what="a new worker serving")
        first_new = min(t for p, t in pids.items() if p not in known) - step
        deadline = time.monotonic() + hold_s
        wait_until(lambda: time.monotonic() >= deadline, timeout=hold_s + 5, what="peak held")
        wanted[0] = 1
        wait_until(lambda: _serving(local, "m") == 1, timeout=90, what="scaled back down")
        ended = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join()
    # worker-seconds: serving workers integrated over the run, against the peak all along
    inside = [(t, n) for t, n in samples if began <= t <= ended and n >= 0]
    worker_s = sum(n * (t2 - t1) for (t1, n), (t2, _) in itertools.pairwise(inside))
    peak = max(n for _, n in inside)
    # a cold start: z has gone to zero by now (min 0, idle since the start)
    wait_until(lambda: _serving(local, "z") == 0, timeout=60, what="z at zero")
    t0 = time.monotonic()
    r = httpx.post(f"http://127.0.0.1:{port}/v2/models/z/infer", json={"inputs": []}, timeout=60)
    cold = time.monotonic() - t0 if r.status_code == 200 else float("nan")
    return RealResult(
        step_to_new_worker_serving_s=round(first_new, 2),
        worker_seconds=round(worker_s, 1),
        static_peak_worker_seconds=round(peak * (ended - began), 1),
        peak_workers=peak,
        requests=counts["ok"] + counts["failed"],
        failed=counts["failed"],
        cold_start_s=round(cold, 2),
    )
