"""Admission under overload: the strategy over plain data, then through the router's core.

The fleet's load for a model is what its regions hold over what they serve without
queueing; ``batch`` is refused from a lower load than ``interactive``; every refusal is a
503 with ``Retry-After`` and a message that says why, decided in microseconds."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.admission import (
    Admission,
    AdmissionConfig,
    implied_deadline_ms,
    request_priority,
)
from router.http11 import Request, Response
from router.keys import digest
from router.policies import RouterStats
from router.ranking import make_policy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker

PARIS, VIRGINIA = (48.86, 2.35), (39.05, -77.49)


def _region(
    name: str, capacity: float, *, queued: int = 0, endpoint: str = "http://x"
) -> RegionView:
    lat, lon = PARIS if name == "eu" else VIRGINIA
    worker = WorkerView(f"{name}-w1", endpoint, HealthState.HEALTHY, ("m:1",), latency_p50_ms=100.0)
    return RegionView(name=name, state=HealthState.HEALTHY, lat=lat, lon=lon,
                      capacity_rps=capacity, queue_depth=queued, workers=(worker,))  # fmt: skip


def _snap(*regions: RegionView) -> RoutingSnapshot:
    return RoutingSnapshot(version=1, generated_at=time.time(), regions=regions)


def _hold(stats: RouterStats, region: str, n: int, now: float) -> None:
    for _ in range(n):
        stats.on_dispatch(region, now)


# --- the strategy ------------------------------------------------------------------------------


def test_load_is_what_the_fleet_holds_over_what_it_serves_without_queueing() -> None:
    # two regions of 20 req/s at 100 ms (reported): 2 + 2 requests in service at once
    snap = _snap(_region("eu", 20.0), _region("us", 20.0, queued=3))
    stats, now = RouterStats(), time.monotonic()
    admission = Admission()
    assert admission.load(snap, stats, "m", now) == pytest.approx(3 / 4)  # us reported 3
    _hold(stats, "eu", 5, now)
    assert admission.load(snap, stats, "m", now) == pytest.approx((5 + 3) / 4)
    # the shorter of the router's observed attempt time and the workers' report counts
    # (both include queueing once there is a queue)
    stats.on_success("eu", 0.0, 200.0, now)  # one of the five came back, taking 200 ms
    assert admission.load(snap, stats, "m", now) == pytest.approx((4 + 3) / 4)
    _hold(stats, "eu", 8, now)
    for _ in range(8):  # eight more in 50 ms: the EWMA falls below 100
        stats.on_success("eu", 0.0, 50.0, now)
    service_ms = stats.region("eu", now).service_ms
    assert 50.0 < service_ms < 100.0 and stats.region("eu", now).outstanding == 4
    assert admission.load(snap, stats, "m", now) == pytest.approx(
        (4 + 3) / (20 * service_ms / 1000.0 + 2)
    )
    # an open circuit takes a region's capacity and load out of the sum
    stats.open_circuit("us", now)
    assert admission.load(snap, stats, "m", now) == pytest.approx(4 / (20 * service_ms / 1000.0))
    # no region serves the model, or none says its capacity: unknown, never refused
    assert math.isnan(admission.load(snap, stats, "other", now))
    unknown = _snap(_region("eu", 0.0))
    assert math.isnan(admission.load(unknown, RouterStats(), "m", now))
    assert admission.decide(unknown, stats, "m", "batch", now).verdict == "admit"


def test_batch_is_refused_first_and_interactive_while_it_no_longer_fits() -> None:
    snap = _snap(_region("eu", 10.0))  # 1 request in service at once (10/s x 100 ms)
    stats, now = RouterStats(), time.monotonic()
    admission = Admission(AdmissionConfig(interactive_max_load=3.0, batch_max_load=1.0))
    assert admission.decide(snap, stats, "m", "batch", now).verdict == "admit"
    _hold(stats, "eu", 1, now)  # load 1: the worker is busy
    batch = admission.decide(snap, stats, "m", "batch", now)
    assert (batch.verdict, batch.reason) == ("refuse", "capacity")
    assert batch.retry_after_s >= 1 and batch.load == pytest.approx(1.0)
    assert "model 'm' is at capacity" in batch.message and "batch" in batch.message
    assert admission.decide(snap, stats, "m", "interactive", now).verdict == "admit"
    _hold(stats, "eu", 2, now)  # load 3: a queue two deep
    refused = admission.decide(snap, stats, "m", "interactive", now)
    assert (refused.verdict, refused.reason) == ("refuse", "capacity")
    assert "interactive requests are admitted below 3x" in refused.message
    # a ceiling of 0 never refuses that class
    off = Admission(AdmissionConfig(interactive_max_load=0.0))
    assert off.decide(snap, stats, "m", "interactive", now).verdict == "admit"
    assert off.decide(snap, stats, "m", "batch", now).verdict == "refuse"


def test_a_decision_takes_microseconds() -> None:
    regions = tuple(_region(n, 10.0) for n in ("eu", "us"))
    snap = _snap(*regions)
    stats, now = RouterStats(), time.monotonic()
    _hold(stats, "eu", 50, now)
    admission = Admission()
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        decision = admission.decide(snap, stats, "m", "batch", now)
    per_us = (time.perf_counter() - started) * 1e6 / n
    print(f"capacity admission: {per_us:.1f} us per decision")
    assert decision.verdict == "refuse"
    assert per_us < 100.0


def test_the_class_and_the_implied_deadline() -> None:
    interactive = ApiKeyGrant("a", "0" * 64, 1.0, 1.0, deadline_ms=800.0)
    batch = ApiKeyGrant("b", "1" * 64, 1.0, 1.0, priority="batch")
    assert request_priority(None, None) == "interactive"
    assert request_priority(interactive, None) == "interactive"
    assert request_priority(interactive, b"batch") == "batch"  # a client may lower its class
    assert request_priority(batch, b"interactive") == "batch"  # never raise it
    assert implied_deadline_ms(None) is None
    assert implied_deadline_ms(interactive) == 800.0
    assert implied_deadline_ms(batch) is None
    # the OpenAI client's read timeout (seconds) is a deadline when it is the shorter
    assert implied_deadline_ms(None, b"0.5") == 500.0
    assert implied_deadline_ms(interactive, b"600") == 800.0
    assert implied_deadline_ms(interactive, b"soon") == 800.0  # a hint, not an error
    ring = ApiKeyring(1, 0.0, (interactive, batch))
    assert ApiKeyring.from_json(ring.to_json()) == ring
    older = orjson.loads(ring.to_json())
    for key in older["keys"]:  # a keyring from before the classes: interactive, no deadline
        del key["priority"], key["deadline_ms"]
    assert ApiKeyring.from_dict(older).keys[1].priority == "interactive"


# --- through the router ----------------------------------------------------------------------

BATCH_KEY, FAST_KEY = b"mrk_batch_key", b"mrk_fast_key"


@pytest.fixture
async def keyed_router(tmp_path: Path) -> AsyncIterator[tuple[RouterServer, StandInWorker]]:
    worker = StandInWorker("eu", delay_s=0.02)
    await worker.start()
    server = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json", require_api_key=True,
                       admit_interactive_max_load=3.0, admit_batch_max_load=1.0),
        make_policy("meridian"),
    )  # fmt: skip
    server.store.offer(_snap(_region("eu", 100.0, endpoint=worker.endpoint)))
    grants = (
        ApiKeyGrant("nightly", digest(BATCH_KEY), 1e6, 1e6, priority="batch"),
        ApiKeyGrant("app", digest(FAST_KEY), 1e6, 1e6, deadline_ms=5000.0),
    )
    server.core.keyring.offer(ApiKeyring(1, time.time(), grants))
    await server.start()
    try:
        yield server, worker
    finally:
        await server.stop()
        await worker.stop()


def _request(key: bytes) -> Request:
    headers = [(b"x-meridian-client-location", b"48.86,2.35"), (b"x-api-key", key)]
    return Request("POST", "/v2/models/m/infer", "", headers, b"{}", "127.0.0.1")


async def test_a_batch_key_is_refused_at_capacity_while_an_interactive_key_is_served(
    keyed_router: tuple[RouterServer, StandInWorker],
) -> None:
    server, worker = keyed_router
    core = server.core
    served = await core.handle(_request(FAST_KEY))
    assert served.status == 200
    # the key's default deadline reached the worker (no header from the client)
    passed = worker.seen[-1].header(b"x-meridian-deadline-ms")
    assert passed is not None and 4000.0 < float(passed) <= 5000.0
    assert (await core.handle(_request(BATCH_KEY))).status == 200  # an idle fleet
    snap = core.store.current
    assert snap is not None
    while core.admission.load(snap, core.stats, "m", time.monotonic()) < 1.0:
        core.stats.on_dispatch("eu", time.monotonic())  # requests in service, none queued
    load = core.admission.load(snap, core.stats, "m", time.monotonic())
    assert 1.0 <= load < 2.0  # 100/s at the ~20 ms observed: each request held adds ~0.5
    seen = len(worker.seen)
    refused = await core.handle(_request(BATCH_KEY))
    assert isinstance(refused, Response) and refused.status == 503
    assert int(dict(refused.headers)[b"retry-after"]) >= 1
    assert "at capacity" in orjson.loads(refused.body)["error"]
    assert (await core.handle(_request(FAST_KEY))).status == 200
    assert len(worker.seen) == seen + 1  # the refused one never reached the worker
    # router time of a refusal, key check and all: well under a millisecond
    n = 2000
    started = time.perf_counter()
    for _ in range(n):
        again = await core.handle(_request(BATCH_KEY))
    per_request_ms = (time.perf_counter() - started) * 1000.0 / n
    print(f"capacity refusal: {per_request_ms * 1000.0:.0f} us of router time per request")
    assert again.status == 503 and per_request_ms < 0.5
    assert len(worker.seen) == seen + 1
    metrics = core.metrics.render().decode()
    assert (
        'meridian_router_admission_refused_total{priority="batch",reason="capacity"} 2001.0'
        in metrics
    )
    assert 'meridian_router_admission_admitted_total{priority="interactive"} 2.0' in metrics
    shown = [line for line in metrics.splitlines() if line.startswith("meridian_router_model_load")]
    assert len(shown) == 1 and float(shown[0].rsplit(" ", 1)[1]) >= 1.0
