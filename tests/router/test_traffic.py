"""The router counts served requests per client area and region for the console's map."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.metrics import TTFT_BUCKETS_S, Histogram
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from router.traffic import TrafficReporter
from tests.router.conftest import StandInWorker, snapshot_for

EDGE = "x-meridian-client-location"


class Recorder:
    def __init__(self) -> None:
        self.reports: list[dict[str, Any]] = []

    async def send(self, report: dict[str, Any]) -> None:
        self.reports.append(report)


@pytest.fixture
async def router(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> AsyncIterator[tuple[RouterServer, httpx.AsyncClient]]:
    near, far = two_workers
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json")
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}))
    port = await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}")
    try:
        yield server, client
    finally:
        await client.aclose()
        await server.stop()


async def test_served_requests_are_counted_per_area_and_serving_region(router) -> None:
    server, client = router
    reporter = TrafficReporter(Recorder(), "edge-1", interval_s=2.0, cell_deg=0.5)
    server.core.traffic = reporter
    for _ in range(3):
        r = await client.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "11.1,10.9"})
        assert r.headers["x-meridian-region"] == "near"
    r = await client.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "41.2,39.8"})
    assert r.headers["x-meridian-region"] == "far"
    missing = await client.post("/v2/models/nope/infer", content=b"{}", headers={EDGE: "1,1"})
    assert missing.status_code == 404  # refused, not served: not counted
    report = reporter.take()
    assert report["router"] == "edge-1" and report["interval_s"] == 2.0
    assert sorted((f["lat"], f["lon"], f["region"], f["requests"]) for f in report["flows"]) == [
        (11.0, 11.0, "near", 3),
        (41.0, 40.0, "far", 1),
    ]
    assert reporter.take()["flows"] == []  # each interval counts afresh


def test_time_to_first_token_is_the_interval_mean_per_region() -> None:
    ttft = Histogram(TTFT_BUCKETS_S)
    reporter = TrafficReporter(Recorder(), "edge-1", ttft=ttft)
    ttft.observe("eu", 0.1)
    ttft.observe("eu", 0.3)
    assert reporter.take()["regions"] == [{"region": "eu", "streams": 2, "ttft_ms": 200.0}]
    ttft.observe("eu", 0.05)
    assert reporter.take()["regions"] == [{"region": "eu", "streams": 1, "ttft_ms": 50.0}]
    assert reporter.take()["regions"] == []  # no stream in the interval


def test_brownout_transitions_ride_on_the_report() -> None:
    from meridian.snapshot import HealthState, WorkerView
    from router.brownout import BrownoutLedger, Overflow

    ledger = BrownoutLedger(hold_s=1.0)
    worker = WorkerView("r", "http://127.0.0.1:1", HealthState.HEALTHY, ("m:1:int8",))
    ledger.overflowed("eu", "m", Overflow("int8", worker, 1.5), now=10.0)
    reporter = TrafficReporter(Recorder(), "r1", brownout=lambda: [
        t.to_dict() for t in ledger.transitions(10.5)
    ])  # fmt: skip
    assert reporter.take()["brownout"] == [
        {"region": "eu", "model": "m", "variant": "int8", "entered": True, "load": 1.5}
    ]
    assert reporter.take()["brownout"] == []  # reported once
