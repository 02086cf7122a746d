"""The router's serving path over real loopback sockets with stand-in workers."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from meridian.keyring import ApiKeyGrant, ApiKeyring
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for

EDGE = "x-meridian-client-location"


@pytest.fixture
async def router(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> AsyncIterator[tuple[RouterServer, httpx.AsyncClient]]:
    near, far = two_workers
    settings = RouterSettings(
        port=0, snapshot_path=tmp_path / "snap.json", max_body_bytes=1024, breaker_threshold=2
    )
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}))
    port = await server.start()
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers={EDGE: "11,11"})
    try:
        yield server, client
    finally:
        await client.aclose()
        await server.stop()


async def test_request_goes_to_the_nearest_region_and_says_so(router, two_workers) -> None:
    _, client = router
    near, far = two_workers
    r = await client.post("/v2/models/mlp/infer", content=b'{"inputs":[]}')
    assert r.status_code == 200
    assert r.headers["x-meridian-region"] == "near"
    assert r.headers["x-meridian-attempts"] == "1"
    assert r.json()["served_by"] == "near"
    assert near.seen[0].body == b'{"inputs":[]}'  # passed through byte for byte
    assert not far.seen


async def test_client_far_away_goes_elsewhere(router) -> None:
    _, client = router
    r = await client.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "41,41"})
    assert r.headers["x-meridian-region"] == "far"


async def test_5xx_and_dead_region_fail_over_without_client_error(router, two_workers) -> None:
    server, client = router
    near, _ = two_workers
    near.status = 500
    r = await client.post("/v2/models/mlp/infer", content=b"{}")
    assert r.status_code == 200 and r.headers["x-meridian-region"] == "far"
    assert r.headers["x-meridian-attempts"] == "2"
    await near.stop()  # now the region refuses connections
    for _ in range(5):
        r = await client.post("/v2/models/mlp/infer", content=b"{}")
        assert r.status_code == 200 and r.headers["x-meridian-region"] == "far"
    # the breaker ejected "near": later requests go straight to "far"
    assert r.headers["x-meridian-attempts"] == "1"
    ready = (await client.get("/v2/health/ready")).json()
    assert "near" in ready["open_circuits"]
    assert server.core.counters["failed"] == 0
    await near.start()  # let the fixture stop it again


async def test_all_regions_down_gives_an_explicit_error(router, two_workers) -> None:
    _, client = router
    for w in two_workers:
        w.status = 503
    r = await client.post("/v2/models/mlp/infer", content=b"{}")
    assert r.status_code == 502
    assert "all regions failed" in r.json()["error"]


async def test_limits_and_unknown_routes(router) -> None:
    _, client = router
    r = await client.post("/v2/models/mlp/infer", content=b"x" * 2048)
    assert r.status_code == 413
    assert "limit" in r.text
    assert (await client.get("/nothing")).status_code == 404
    r = await client.post("/v2/models/unknown/infer", content=b"{}")
    assert r.status_code == 404 and "unknown" in r.json()["error"]
    assert (await client.get("/v2/health/live")).status_code == 200


async def test_saved_snapshot_survives_a_restart(router, tmp_path: Path) -> None:
    server, _ = router
    saved = orjson.loads((tmp_path / "snap.json").read_bytes())
    assert saved["version"] == 1
    again = RouterServer(
        RouterSettings(port=0, snapshot_path=tmp_path / "snap.json"), NearestPolicy()
    )
    assert again.store.current is not None
    assert again.store.current.version == server.store.current.version
    age = again.store.confirmed_age()  # from the saved snapshot's generation, not unknown
    assert age is not None and 0 <= age < 60


async def test_api_keys_from_the_keyring_and_rate_limits(tmp_path: Path, two_workers) -> None:
    near, far = two_workers
    acme = ApiKeyGrant("acme", hashlib.sha256(b"secret-key").hexdigest(), 0.1, 2)
    narrow = ApiKeyGrant("narrow", hashlib.sha256(b"other-key").hexdigest(), 100, 100, ("bert",))
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", require_api_key=True)
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            no_keyring = await c.post("/v2/models/mlp/infer", headers={"x-api-key": "secret-key"})
            assert no_keyring.status_code == 503 and no_keyring.headers["retry-after"] == "1"
            server.keyring.offer(ApiKeyring(1, 0.0, (acme, narrow)))
            missing = await c.post("/v2/models/mlp/infer", content=b"{}")
            assert missing.status_code == 401
            assert "API key is required" in missing.json()["error"]
            wrong = await c.post("/v2/models/mlp/infer", headers={"x-api-key": "nope"})
            assert wrong.status_code == 401
            other_model = await c.post("/v2/models/mlp/infer", headers={"x-api-key": "other-key"})
            assert other_model.status_code == 403
            assert "may not call model 'mlp'" in other_model.json()["error"]
            good = {"authorization": "Bearer secret-key"}
            codes = [
                (await c.post("/v2/models/mlp/infer", headers=good)).status_code for _ in range(3)
            ]
            assert codes == [200, 200, 429]
            limited = await c.post("/v2/models/mlp/infer", headers=good)
            assert int(limited.headers["retry-after"]) >= 1
            # revoked: the next keyring no longer carries it
            server.keyring.offer(ApiKeyring(2, 0.0, (narrow,)))
            revoked = await c.post("/v2/models/mlp/infer", headers=good)
            assert revoked.status_code == 401
            assert "revoked" in revoked.json()["error"]
            ready = (await c.get("/v2/health/ready")).json()
            assert (ready["keyring_version"], ready["api_keys"]) == (2, 1)
            assert ready["keyring_confirmed_age_s"] is not None
    finally:
        await server.stop()
    # a router restarted with no control plane checks the keys it saved
    assert (tmp_path / "s.api-keys.json").exists()
    again = RouterServer(settings, NearestPolicy())
    assert again.keyring.current is not None and again.keyring.current.version == 2
    assert again.keyring.current.keys == (narrow,)


async def test_wan_emulation_charges_the_modelled_round_trip(tmp_path: Path, two_workers) -> None:
    import time

    near, far = two_workers
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", emulate_wan=True)
    policy = NearestPolicy()
    server = RouterServer(settings, policy)
    # near: Frankfurt; far: Sydney; the client is in Frankfurt
    server.store.offer(snapshot_for({"near": (near, 50.1, 8.7), "far": (far, -33.9, 151.2)}))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            t0 = time.monotonic()
            r = await c.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "50.1,8.7"})
            near_s = time.monotonic() - t0
            assert r.headers["x-meridian-region"] == "near"
            near.status = 500  # force the far region
            t0 = time.monotonic()
            r = await c.post("/v2/models/mlp/infer", content=b"{}", headers={EDGE: "50.1,8.7"})
            far_s = time.monotonic() - t0
            assert r.headers["x-meridian-region"] == "far"
    finally:
        await server.stop()
    from router.latency import FITTED, great_circle_km

    sydney_s = FITTED.rtt_ms(great_circle_km(50.1, 8.7, -33.9, 151.2)) / 1000
    assert sydney_s > 0.2  # Frankfurt-Sydney is modelled at about 280 ms
    assert far_s >= sydney_s  # the far attempt was held for the modelled round trip
    assert near_s < sydney_s  # the near one was not


async def test_anonymous_limits_are_per_client_behind_a_trusted_proxy(
    tmp_path: Path, two_workers
) -> None:
    near, far = two_workers
    settings = RouterSettings(
        port=0, snapshot_path=tmp_path / "s.json", anonymous_rate=0.01, anonymous_burst=1
    )
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}))
    port = await server.start()
    a = {"x-forwarded-for": "198.51.100.7"}
    b = {"x-forwarded-for": "203.0.113.9"}
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            first = await c.post("/v2/models/mlp/infer", headers=a)
            second = await c.post("/v2/models/mlp/infer", headers=a)
            other = await c.post("/v2/models/mlp/infer", headers=b)
            assert (first.status_code, second.status_code, other.status_code) == (200, 429, 200)
    finally:
        await server.stop()


@pytest.mark.redis
async def test_two_router_replicas_share_a_keys_budget_through_redis(
    tmp_path: Path, two_workers, redis_url: str
) -> None:
    near, far = two_workers
    name = f"acme-{uuid.uuid4().hex[:8]}"  # Redis outlives test runs
    grant = ApiKeyGrant(name, hashlib.sha256(b"shared-key").hexdigest(), 0.01, 4)
    snap = snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)})
    routers = []
    for i in range(2):
        settings = RouterSettings(
            port=0, snapshot_path=tmp_path / f"s{i}.json", require_api_key=True, redis_url=redis_url
        )
        server = RouterServer(settings, NearestPolicy())
        server.store.offer(snap)
        server.keyring.offer(ApiKeyring(1, 0.0, (grant,)))
        await server.start()
        routers.append(server)
    try:
        codes = []
        async with httpx.AsyncClient(headers={"x-api-key": "shared-key"}) as c:
            for i in range(10):
                url = f"http://127.0.0.1:{routers[i % 2].port}/v2/models/mlp/infer"
                codes.append((await c.post(url)).status_code)
        assert codes.count(200) == 4 and codes.count(429) == 6, codes
    finally:
        for server in routers:
            await server.stop()


async def test_metrics_report_outcomes_snapshot_age_and_regions(
    tmp_path: Path, two_workers
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    near, far = two_workers
    far.status = 503  # every attempt there fails
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json")
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(snapshot_for({"near": (near, 10.0, 10.0), "far": (far, 40.0, 40.0)}))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            for location in ("10,10", "40,40", "40,40"):
                r = await c.post("/v2/models/mlp/infer", headers={EDGE: location})
                assert r.status_code == 200  # far fails over to near
            scraped = await c.get("/metrics")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(scraped.text)
            for s in family.samples
        }
        assert samples[("meridian_router_events_total", (("event", "served"),))] == 3
        assert samples[("meridian_router_events_total", (("event", "upstream_5xx"),))] == 2
        assert samples[("meridian_router_snapshot_version", ())] == 1
        assert 0 <= samples[("meridian_router_snapshot_confirmed_age_seconds", ())] < 60
        assert samples[("meridian_router_keyring_version", ())] == 0
        assert samples[("meridian_router_region_routable", (("region", "far"),))] == 1
        assert samples[("meridian_router_region_outstanding", (("region", "near"),))] == 0
    finally:
        await server.stop()
