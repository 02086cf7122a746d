"""The whole system as real processes: control plane, three regions (agents + workers),
routers that require API keys issued through the admin API, every wire with TLS from the
fleet's CA. Infer through the router
with tritonclient, issue and revoke keys, fail a region mid-traffic, stop the control
plane, restart a router with no control plane: every request is answered.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from demo.fleet import LocalFleet
from demo.geography import REGIONS
from meridian.waiting import wait_until
from tests.worker.text_model import DIM, build_text_model, reference

pytestmark = pytest.mark.slow

SITES = REGIONS[:3]  # us-east-1, eu-central-1, ap-northeast-1
FRANKFURT = "50.1,8.7"
TEXT = "fast inference across regions"


class Fleet:
    def __init__(
        self, local: LocalFleet, router_port: int, table: np.ndarray, api_key: str
    ) -> None:
        self.local = local
        self.api_key = api_key
        self.router_port = router_port
        self.table = table
        assert local.ca_file is not None
        self.ca_file = local.ca_file
        self.ssl_context = local.verify

    def infer(
        self, location: str, port: int | None = None, api_key: str | None = None
    ) -> httpx.Response:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}]}
        return httpx.post(
            f"{self.local.router_url(port or self.router_port)}/v2/models/tiny/infer",
            json=body,
            headers={"x-meridian-client-location": location, "x-api-key": api_key or self.api_key},
            verify=self.ssl_context,
            timeout=30,
        )


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    table = build_text_model(work / "tiny.onnx")
    local = LocalFleet(work, env={"MERIDIAN_REPORT_INTERVAL_S": "0.5"}, ca_dir=work / "ca")
    try:
        admin = local.start_control_plane()
        admin.register_model("tiny", "1", work / "tiny.onnx", dim=DIM)
        for site in SITES:
            local.add_region(admin, site, [("tiny", "1", None)])
        api_key = admin.api_key("e2e-clients", rate_per_s=1000, burst=1000)
        admin.close()
        _, port = local.start_router(require_api_key=True)
        local.wait_serving({s.name for s in SITES}, timeout=180)
        router = local.routers[0]
        local.wait_http(f"{local.router_url(port)}/v2/health/ready", router, "router ready")
        yield Fleet(local, port, table, api_key)
    finally:
        local.stop()


def test_tritonclient_infers_through_the_router_over_https(fleet: Fleet) -> None:
    import tritonclient.http as http

    client = http.InferenceServerClient(
        f"127.0.0.1:{fleet.router_port}",
        ssl=True,
        ssl_options={"ca_certs": str(fleet.ca_file)},
    )
    inp = http.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([TEXT.encode()], dtype=np.object_))
    result = client.infer("tiny", [inp], headers={"x-api-key": fleet.api_key})
    np.testing.assert_allclose(
        result.as_numpy("embedding")[0], reference(fleet.table, TEXT), rtol=1e-5, atol=1e-6
    )


def test_clients_are_served_by_their_nearest_region(fleet: Fleet) -> None:
    for location, region in (("40.7,-74.0", "us-east-1"), (FRANKFURT, "eu-central-1"),
                             ("35.7,139.7", "ap-northeast-1")):  # fmt: skip
        r = fleet.infer(location)
        assert r.status_code == 200, r.text
        assert r.headers["x-meridian-region"] == region


def test_api_keys_issued_and_revoked_through_the_admin_api(fleet: Fleet) -> None:
    from demo.admin import Admin

    assert fleet.infer(FRANKFURT, api_key="mrk_not-issued").status_code == 401
    local = fleet.local
    admin = Admin(local.base_url, local.admin_token, verify=local.verify)
    try:
        key = admin.api_key("short-lived", rate_per_s=100, burst=100)
        # reaches the router through the routing snapshot
        wait_until(lambda: fleet.infer(FRANKFURT, api_key=key).status_code == 200,
                   timeout=10, what="the new key accepted by the router")  # fmt: skip
        admin.revoke_api_key("short-lived")
        t0 = time.monotonic()
        wait_until(lambda: fleet.infer(FRANKFURT, api_key=key).status_code == 401,
                   timeout=10, what="the revoked key refused by the router")  # fmt: skip
        revoked_after_s = time.monotonic() - t0
    finally:
        admin.close()
    assert revoked_after_s < 2.0  # the admin write nudges the leader, which republishes
    assert fleet.infer(FRANKFURT).status_code == 200  # other keys unaffected


def test_the_leader_persists_region_health_periodically(fleet: Fleet) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{fleet.local.workdir / 'cp' / 'meridian.sqlite'}")

    def rows() -> dict[str, str]:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT region, state FROM region_health")).all())

    try:
        # rows change only at flushes (every few seconds), and only rows that changed
        wait_until(
            lambda: rows() == {s.name: "healthy" for s in SITES},
            timeout=30,
            what="region_health rows for every region, healthy",
        )
    finally:
        engine.dispose()


def test_killing_a_region_mid_traffic_fails_no_request(fleet: Fleet) -> None:
    served: Counter[str] = Counter()
    failures: list[str] = []
    stop_at = [0.0]

    def client() -> None:
        while stop_at[0] == 0.0 or time.monotonic() < stop_at[0]:
            r = fleet.infer(FRANKFURT)
            if r.status_code != 200:
                failures.append(f"{r.status_code} {r.text}")
            else:
                served[r.headers["x-meridian-region"]] += 1

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        wait_until(lambda: served["eu-central-1"] >= 20, timeout=30, what="traffic to eu")
        fleet.local.agents["eu-central-1"].kill_group()  # agent and its workers
        wait_until(
            lambda: "eu-central-1" not in fleet.local.serving_regions(),
            timeout=10,
            what="eu-central-1 out of the snapshot",
        )
        before = sum(served.values())
        wait_until(lambda: sum(served.values()) >= before + 20, timeout=30, what="more traffic")
        stop_at[0] = time.monotonic()
        for f in futures:
            f.result()
    assert failures == []
    after = fleet.infer(FRANKFURT)
    assert after.status_code == 200 and after.headers["x-meridian-region"] != "eu-central-1"


def test_traffic_goes_on_without_the_control_plane(fleet: Fleet) -> None:
    assert fleet.local.control_plane is not None
    fleet.local.control_plane.kill_group()
    for location in ("40.7,-74.0", "35.7,139.7", FRANKFURT):
        r = fleet.infer(location)
        assert r.status_code == 200, r.text
    ready = httpx.get(
        f"{fleet.local.router_url(fleet.router_port)}/v2/health/ready",
        verify=fleet.ssl_context,
    ).json()
    assert ready["ready"] is True and ready["snapshot_version"] >= 1


def test_a_router_started_with_no_control_plane_serves_from_its_saved_snapshot(
    fleet: Fleet,
) -> None:
    import shutil

    local = fleet.local
    saved = local.workdir / "router-snapshot.json"
    shutil.copyfile(saved, local.workdir / "second-snapshot.json")
    keyring = local.workdir / "router-snapshot.api-keys.json"
    shutil.copyfile(keyring, local.workdir / "second-snapshot.api-keys.json")
    router, port = local.start_router(name="second", require_api_key=True)
    local.wait_http(f"{local.router_url(port)}/v2/health/ready", router, "second router")
    r = fleet.infer("35.7,139.7", port=port)
    assert r.status_code == 200 and r.headers["x-meridian-region"] == "ap-northeast-1"
