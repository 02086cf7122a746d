"""The console's backend: the state it sends, its one publisher, sign-in, the event stream,
and routers' traffic reports, against a real control plane with real agents."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from control_plane.console.hub import ConsoleHub
from control_plane.console.state import fleet_state, split_details
from control_plane.console.traffic import TrafficView, merge_reports
from control_plane.health.summary import GpuSummary, RegionSummary, WorkerSummary
from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot
from meridian.waiting import wait_until
from tests.console_support import ADMIN_TOKEN, READ_TOKEN, SITES, console_fleet_factory

__all__ = ["console_fleet_factory"]  # a fixture

READ = {"Authorization": f"Bearer {READ_TOKEN}"}


# --- pure parts ----------------------------------------------------------------------------


def test_reports_merge_per_area_and_region_and_old_ones_are_dropped() -> None:
    reports = [
        {"router": "a", "interval_s": 2.0, "at": 100.0,
         "flows": [{"lat": 40.71, "lon": -74.01, "region": "us", "requests": 20},
                   {"lat": 40.74, "lon": -73.98, "region": "eu", "requests": 4}],
         "regions": [{"region": "us", "streams": 2, "ttft_ms": 100.0}]},
        {"router": "b", "interval_s": 1.0, "at": 101.0,
         "flows": [{"lat": 40.7, "lon": -74.0, "region": "us", "requests": 5}],
         "regions": [{"region": "us", "streams": 6, "ttft_ms": 20.0}]},
        {"router": "gone", "interval_s": 1.0, "at": 50.0,
         "flows": [{"lat": 1.0, "lon": 1.0, "region": "us", "requests": 999}]},
    ]  # fmt: skip
    view = merge_reports(reports, now=102.0, max_age_s=10.0)
    assert view.routers == 2
    [area] = view.areas  # New York's cell, from both routers
    assert (area.lat, area.lon) == (40.7, -74.0)
    assert {f.region: f.rps for f in area.flows} == {"us": 15.0, "eu": 2.0}
    assert area.rps == 17.0
    assert view.regions["us"].rps == 15.0
    assert view.regions["us"].ttft_ms == 40.0  # weighted by streams: (2*100 + 6*20) / 8
    assert view.regions["eu"].ttft_ms == 0.0


def test_state_carries_regions_gpus_workers_deployments_and_age() -> None:
    snapshot = RoutingSnapshot(
        version=7,
        generated_at=1000.0,
        regions=(
            RegionView("eu", HealthState.HEALTHY, 53.3, -6.3, "H100", 2, 1, 100.0, 3, 1),
            RegionView("us", HealthState.DOWN, 39.0, -77.5, "H100", 4, 0),
        ),
        deployments=(DeploymentRoute("m", "1", "eu", 0.9), DeploymentRoute("m", "2", "eu", 0.1)),
    )
    summary = RegionSummary(
        region="eu",
        replica="r1",
        state=HealthState.HEALTHY,
        last_report_at=999.5,
        gpus=(
            GpuSummary(0, "ok", temperature_c=60.0, ecc_corrected=2),
            GpuSummary(1, "failed", "XID 79", ecc_uncorrected=1, xids=(79,)),
        ),
        workers=(
            WorkerSummary("w0", "http://w0", HealthState.HEALTHY, queue_depth=3,
                          throughput_rps=30.0, latency_p50_ms=10.0, latency_p99_ms=40.0),
            WorkerSummary("w1", "http://w1", HealthState.HEALTHY, throughput_rps=10.0,
                          latency_p50_ms=20.0, latency_p99_ms=80.0),
        ),
    )  # fmt: skip
    state = fleet_state(
        snapshot,
        {"eu": summary},
        TrafficView(),
        now=1002.0,
        desired=lambda model, version, region: 3 if version == "1" else None,
    )
    assert state["snapshot"] == {"version": 7, "age_s": 2.0}
    eu, us = state["regions"]
    assert (eu["state"], eu["gpus_total"], eu["gpus_healthy"]) == ("healthy", 2, 1)
    assert eu["p50_ms"] == 12.5  # weighted by each worker's throughput
    assert eu["report_age_s"] == 2.5 and eu["agent"] is True
    assert eu["gpus"][1] == {
        "index": 1, "condition": "failed", "reason": "XID 79", "util": 0.0, "temp_c": 0.0,
        "mem_used": 0, "mem_total": 0, "ecc_corrected": 0, "ecc_uncorrected": 1, "xids": [79],
    }  # fmt: skip
    assert [w["id"] for w in eu["workers"]] == ["w0", "w1"]
    assert us["agent"] is False and us["gpus"] == [] and us["report_age_s"] is None
    assert [(d["version"], d["weight"], d["desired"]) for d in state["deployments"]] == [
        ("1", 0.9, 3),
        ("2", 0.1, None),
    ]
    assert (eu["workers_total"], eu["workers_healthy"]) == (2, 2)
    # every console gets the regions without GPUs and workers; a region page gets its own
    summary_state, details = split_details(state)
    assert not {"gpus", "workers"} & set(summary_state["regions"][0])
    assert summary_state["regions"][0]["workers_total"] == 2
    assert details["eu"]["gpus"] == eu["gpus"] and details["eu"]["workers"] == eu["workers"]
    assert state["regions"][0]["gpus"]  # the built state itself is left whole


def test_a_gpu_summary_from_an_older_or_newer_replica_still_parses() -> None:
    raw = orjson.dumps(
        {
            "region": "eu", "replica": "r", "state": "healthy",
            "gpus": [{"index": 0, "condition": "ok", "from_the_future": 1}],
            "workers": [{"worker_id": "w", "endpoint": "e", "state": "healthy", "models": [],
                         "from_the_future": 2}],
        }
    )  # fmt: skip
    parsed = RegionSummary.from_json(raw)
    assert parsed.gpus == (GpuSummary(0, "ok"),)
    assert parsed.workers[0].worker_id == "w"


async def test_one_publisher_bounded_queues_and_close_ends_every_stream() -> None:
    built = 0
    changed = asyncio.Event()

    async def build() -> dict[str, Any]:
        nonlocal built
        built += 1
        return {"n": built, "regions": []}

    async def wait_change(timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await changed.wait()
        except TimeoutError:
            return False
        changed.clear()
        return True

    hub = ConsoleHub(build, wait_change, min_interval_s=0.0, tick_s=60.0, queue_size=3)
    slow = hub.subscribe()  # never reads
    for _ in range(10):
        await hub.publish_once()
    assert built == 10  # built once per change, whatever the number of subscribers
    assert slow.queue.qsize() == 3 and slow.dropped == 7
    frames = [slow.queue.get_nowait() for _ in range(3)]
    assert [orjson.loads(f.split(b"data: ")[1])["n"] for f in frames] == [8, 9, 10]
    hub.unsubscribe(slow)

    hub.start()
    reader = hub.subscribe()
    first = reader.queue.get_nowait()  # the latest state at once
    assert first.startswith(b"event: state\ndata: ")
    stream = hub.stream(reader)
    got: list[bytes] = []

    async def read() -> None:
        async for frame in stream:
            got.append(frame)

    task = asyncio.create_task(read())
    changed.set()
    await asyncio.wait_for(_until(lambda: len(got) >= 2), 5)  # retry line + a new state
    await hub.close()
    await asyncio.wait_for(task, 5)  # the stream ended with the hub
    assert hub.subscribers == 0


async def _until(predicate: Any) -> None:
    while not predicate():  # noqa: ASYNC110 (a plain condition, polled with a deadline)
        await asyncio.sleep(0.01)


# --- over HTTP, against a real control plane and agents -----------------------------------


def test_sign_in_sets_a_narrow_cookie_and_the_stream_needs_it(console_fleet_factory: Any) -> None:
    fleet = console_fleet_factory({k: SITES[k] for k in ("us-east", "eu-west")})
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        page = client.get("/ui")
        assert page.status_code == 200 and "console.js" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/ui/static/console.js").status_code == 200

        assert client.post("/ui/session").status_code == 401
        nope = {"Authorization": "Bearer nope"}
        assert client.post("/ui/session", headers=nope).status_code == 401
        assert client.get("/ui/events").status_code == 401  # no cookie

        signed = client.post("/ui/session", headers=READ)
        assert signed.status_code == 200, signed.text
        assert signed.json()["admin"] is False and signed.json()["scopes"] == ["read"]
        cookie = signed.headers["set-cookie"].lower()
        for part in ("meridian_console=", "httponly", "samesite=strict", "path=/ui/events",
                     "max-age=900"):  # fmt: skip
            assert part in cookie, cookie
        assert "secure" not in cookie  # plain HTTP here; over HTTPS it is Secure

        with client.stream("GET", "/ui/events") as events:
            assert events.status_code == 200
            assert events.headers["content-type"].startswith("text/event-stream")
            state = _first_state(events, lambda s: len(s["regions"]) == 2)
        assert {r["name"] for r in state["regions"]} == {"us-east", "eu-west"}
        assert state["snapshot"]["version"] >= 1
        assert all("gpus" not in r for r in state["regions"])
        with client.stream("GET", "/ui/events", params={"region": "us-east"}) as events:
            # once the agent's first reports are in
            detail = _first_event(events, "region", lambda d: len(d["workers"]) == 8)
        assert detail["name"] == "us-east"
        assert [g["index"] for g in detail["gpus"]] == list(range(8))
        assert len(detail["workers"]) == 8

        client.cookies.set("meridian_console", "forged", path="/ui/events")
        assert client.get("/ui/events").status_code == 401
        admin = client.post("/ui/session", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert admin.json()["admin"] is True
        assert client.delete("/ui/session").status_code == 204


def test_history_of_a_region_for_its_charts(console_fleet_factory: Any) -> None:
    fleet = console_fleet_factory({"us-east": SITES["us-east"]})
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        assert client.get("/ui/history/us-east").status_code == 401

        def sampled() -> list[Any]:
            return list(client.get("/ui/history/us-east", headers=READ).json()["samples"])

        wait_until(lambda: len(sampled()) >= 2, timeout=10, what="two samples")
        _t, queue, p50, p99, _ttft = sampled()[-1]
        assert queue == 28 and p50 == 5.0 and p99 == 9.0  # what the agents' workers report


def test_routers_report_traffic_and_the_console_shows_areas(console_fleet_factory: Any) -> None:
    fleet = console_fleet_factory({"us-east": SITES["us-east"]}, agents=False)
    report = {
        "router": "edge-1",
        "interval_s": 2.0,
        "flows": [{"lat": 40.7, "lon": -74.0, "region": "us-east", "requests": 10}],
        "regions": [{"region": "us-east", "streams": 4, "ttft_ms": 25.0}],
    }
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        assert client.post("/v1/traffic", json=report).status_code == 401
        accepted = client.post("/v1/traffic", json=report, headers=READ)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json() == {"router": "edge-1", "flows": 1}
        bad = client.post("/v1/traffic", json={**report, "interval_s": 0}, headers=READ)
        assert bad.status_code == 422
        client.post("/ui/session", headers=READ)
        with client.stream("GET", "/ui/events") as events:
            state = _first_state(events, lambda s: bool(s["areas"]))
    assert state["areas"] == [
        {"lat": 40.7, "lon": -74.0, "rps": 5.0, "flows": [{"region": "us-east", "rps": 5.0}]}
    ]
    assert state["routers"] == 1
    assert state["regions"][0]["ttft_ms"] == 25.0


def test_brownout_transitions_in_router_reports_reach_the_audit_log(
    console_fleet_factory: Any,
) -> None:
    fleet = console_fleet_factory({"us-east": SITES["us-east"]}, agents=False)
    entered = {"region": "us-east", "model": "resnet", "variant": "int8", "entered": True,
               "load": 1.25}  # fmt: skip
    report = {"router": "edge-1", "interval_s": 2.0, "brownout": [entered]}
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    audit = "/v1/audit?entity=region&entity_key=us-east"
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        bad = {**report, "brownout": [{**entered, "load": -1}]}
        assert client.post("/v1/traffic", json=bad, headers=READ).status_code == 422
        assert client.post("/v1/traffic", json=report, headers=READ).status_code == 202
        left = {**entered, "entered": False, "load": 0.9}
        later = {**report, "brownout": [left]}
        assert client.post("/v1/traffic", json=later, headers=READ).status_code == 202
        longest = {**later, "router": "r" * 128}  # the actor column holds 128 characters
        assert client.post("/v1/traffic", json=longest, headers=READ).status_code == 202
        items = client.get(audit, headers=admin).json()["items"]
    brownout = [e for e in items if e["action"].startswith("brownout")]
    assert [e["detail"]["router"] for e in brownout].count("r" * 128) == 1
    brownout = [e for e in brownout if e["detail"]["router"] == "edge-1"]
    assert sorted((e["action"], e["actor"], e["detail"]["variant"]) for e in brownout) == [
        ("brownout_enter", "router:edge-1", "int8"),
        ("brownout_leave", "router:edge-1", "int8"),
    ]


def _first_state(events: httpx.Response, accept: Any = lambda s: True) -> dict[str, Any]:
    return _first_event(events, "state", accept)


def _first_event(events: httpx.Response, kind: str, accept: Any = lambda s: True) -> dict[str, Any]:
    event = ""
    for line in events.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == kind:
            data: dict[str, Any] = orjson.loads(line[6:])
            if accept(data):
                return data
    raise AssertionError(f"the stream ended without a {kind} event")


@pytest.mark.parametrize("scope", ["agent"])
def test_a_token_without_read_scope_cannot_sign_in(console_fleet_factory: Any, scope: str) -> None:
    fleet = console_fleet_factory({"us-east": SITES["us-east"]}, agents=False)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=fleet.url, timeout=10) as client:
        body = {"name": "agentish", "scopes": [scope]}
        made = client.post("/v1/tokens", json=body, headers=admin)
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        refused = client.post("/ui/session", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403
        assert "read scope" in refused.json()["detail"]


async def test_a_routers_reports_reach_the_console(console_fleet_factory: Any) -> None:
    from router.reports import ControlPlaneClient
    from router.traffic import HttpTrafficSink, TrafficReporter

    fleet = console_fleet_factory({"eu-west": SITES["eu-west"]}, agents=False)
    # the first control plane is down: the client goes on to the next one
    client = ControlPlaneClient(["http://127.0.0.1:9", fleet.url], READ_TOKEN)
    sink = HttpTrafficSink(client)
    reporter = TrafficReporter(sink, "edge-2", interval_s=1.0)
    for _ in range(6):
        reporter.note(51.51, -0.12, "eu-west")
    try:
        await sink.send(reporter.take())
    finally:
        await reporter.close()
        await client.close()
    async with httpx.AsyncClient(base_url=fleet.url, timeout=10) as client:
        await client.post("/ui/session", headers=READ)
        async with client.stream("GET", "/ui/events") as events:
            state = await _first_state_async(events, lambda s: bool(s["areas"]))
    assert state["areas"] == [
        {"lat": 51.5, "lon": 0.0, "rps": 6.0, "flows": [{"region": "eu-west", "rps": 6.0}]}
    ]


async def _first_state_async(events: httpx.Response, accept: Any) -> dict[str, Any]:
    event = ""
    async for line in events.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "state":
            state: dict[str, Any] = orjson.loads(line[6:])
            if accept(state):
                return state
    raise AssertionError("the stream ended without a state")
