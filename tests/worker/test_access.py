"""Workers answer the fleet's router only (TLS client certificates), and model management
needs the worker's token in every mode."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from meridian.net import free_port
from meridian.pki import CertificateAuthority, Role
from meridian.pki.files import ServerFiles, write_issued
from meridian.waiting import wait_until
from tests.worker.conftest import MANAGE, MANAGEMENT_SECRET
from tests.worker.inprocess import live_worker
from tests.worker.models import BuiltModels
from worker.access import client_context
from worker.dataplane import DataPlane
from worker.settings import WorkerSettings

BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, ServerFiles]:
    ca = CertificateAuthority.create()
    d = tmp_path / "tls"
    return {
        "worker": write_issued(ca, Role.WORKER, d, name="worker", region="eu-west"),
        "router": write_issued(ca, Role.ROUTER, d, name="router"),
        "agent": write_issued(ca, Role.AGENT, d, name="agent", region="eu-west"),
        "stranger": write_issued(
            CertificateAuthority.create("not the fleet"), Role.ROUTER, tmp_path / "x", name="r"
        ),
    }


def tls_settings(pki: dict[str, ServerFiles], tmp_path: Path) -> WorkerSettings:
    w = pki["worker"]
    return WorkerSettings(
        cache_dir=tmp_path / "cache", allow_local_paths=True, management_token=MANAGEMENT_SECRET,
        tls_cert=w.cert, tls_key=w.key, tls_ca=w.ca,
    )  # fmt: skip


def as_(files: ServerFiles, ca: Path) -> ssl.SSLContext:
    return client_context(str(files.cert), str(files.key), str(ca))


async def test_worker_refuses_clients_without_the_routers_certificate(
    pki: dict[str, ServerFiles], tmp_path: Path, models: BuiltModels
) -> None:
    settings = tls_settings(pki, tmp_path)
    dp = DataPlane(settings)
    ca = pki["worker"].ca
    async with live_worker(settings, dp) as w:
        await dp.load_path("mlp", "1", models.mlp_onnx)
        url = w.url.replace("http://", "https://")
        infer = "/v2/models/mlp/infer"
        # no client certificate: the handshake refuses it
        async with httpx.AsyncClient(
            base_url=url, verify=ssl.create_default_context(cafile=str(ca))
        ) as anon:
            with pytest.raises(httpx.TransportError):
                await anon.post(infer, json=BODY)
        # a router certificate from another CA: refused too
        async with httpx.AsyncClient(base_url=url, verify=as_(pki["stranger"], ca)) as stranger:
            with pytest.raises(httpx.TransportError):
                await stranger.post(infer, json=BODY)
        # plaintext on the TLS port: no answer
        async with httpx.AsyncClient(base_url=w.url, timeout=3) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get("/v2/health/ready")
        # the region agent: probes and statistics, nothing else
        async with httpx.AsyncClient(base_url=url, verify=as_(pki["agent"], ca)) as agent:
            assert (await agent.get("/v2/health/ready")).status_code == 200
            assert (await agent.get("/v2/stats")).status_code == 200
            refused = await agent.post(infer, json=BODY)
            assert refused.status_code == 403 and "router only" in refused.json()["error"]
            assert (await agent.get("/v2/models/mlp")).status_code == 403
            load = "/v2/repository/models/m2/load"
            payload = {"parameters": {"path": str(models.mlp_onnx)}}
            assert (await agent.post(load, json=payload, headers=MANAGE)).status_code == 403
        # the router: inference; management with the token only
        async with httpx.AsyncClient(base_url=url, verify=as_(pki["router"], ca)) as router:
            answer = await router.post(infer, json=BODY)
            assert answer.status_code == 200, answer.text
            assert np.asarray(answer.json()["outputs"][0]["data"]).shape == (4,)
            no_token = await router.post(load, json=payload)
            assert no_token.status_code == 401 and "management" in no_token.json()["error"]
            wrong = await router.post(load, json=payload, headers={"Authorization": "Bearer x"})
            assert wrong.status_code == 401
            loaded = await router.post(load, json=payload, headers=MANAGE)
            assert loaded.status_code == 200, loaded.text
            assert dp.model_ready("m2", None)


async def test_management_needs_a_token_even_in_plaintext_development_use(
    tmp_path: Path, models: BuiltModels
) -> None:
    settings = WorkerSettings(cache_dir=tmp_path / "cache", allow_local_paths=True)
    dp = DataPlane(settings)
    async with live_worker(settings, dp) as w, httpx.AsyncClient(base_url=w.url) as client:
        payload = {"parameters": {"path": str(models.mlp_onnx)}}
        r = await client.post("/v2/repository/models/m/load", json=payload, headers=MANAGE)
        assert r.status_code == 403 and "MERIDIAN_WORKER_MANAGEMENT_TOKEN" in r.json()["error"]
        assert (await client.post("/v2/repository/models/m/unload")).status_code == 403
        assert dp.repository_index() == []  # nothing was loaded


def test_worker_grpc_answers_the_router_only(pki: dict[str, ServerFiles], tmp_path: Path) -> None:
    """A real ``meridian worker`` (its gRPC stubs and tritonclient's cannot share a
    process) with TLS from the environment, called through tritonclient."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    w = pki["worker"]
    env = {
        **os.environ, "MERIDIAN_WORKER_TLS_CERT": str(w.cert),
        "MERIDIAN_WORKER_TLS_KEY": str(w.key), "MERIDIAN_WORKER_TLS_CA": str(w.ca),
        "MERIDIAN_WORKER_MANAGEMENT_TOKEN": MANAGEMENT_SECRET.get_secret_value(),
    }  # fmt: skip
    http_port, grpc_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "meridian", "worker", "--http-port", str(http_port),
           "--grpc-port", str(grpc_port), "--engine-threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(who: str | None) -> grpcclient.InferenceServerClient:
        f = pki[who] if who else None
        return grpcclient.InferenceServerClient(
            f"127.0.0.1:{grpc_port}", ssl=True, root_certificates=str(w.ca),
            private_key=str(f.key) if f else None,
            certificate_chain=str(f.cert) if f else None,
        )  # fmt: skip

    try:
        router = client("router")

        def live() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the worker exited with {proc.returncode}")
            try:
                return bool(router.is_server_live())
            except InferenceServerException:
                return False

        wait_until(live, timeout=60, what="the worker's gRPC over TLS")
        with pytest.raises(InferenceServerException, match="management bearer token"):
            router.load_model("m")
        with pytest.raises(InferenceServerException, match="router only"):
            client("agent").is_server_live()
        with pytest.raises(InferenceServerException):  # no certificate: no handshake
            client(None).is_server_live()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_router_pool_reaches_tls_workers_with_its_certificate_only(
    pki: dict[str, ServerFiles], tmp_path: Path, models: BuiltModels
) -> None:
    import orjson

    from router.tls import worker_context
    from router.upstream import UpstreamError, UpstreamPool

    settings = tls_settings(pki, tmp_path)
    dp = DataPlane(settings)
    ca = pki["worker"].ca
    body = orjson.dumps(BODY)
    headers = [(b"content-type", b"application/json")]
    async with live_worker(settings, dp) as w:
        await dp.load_path("mlp", "1", models.mlp_onnx)
        port = int(w.url.rsplit(":", 1)[1])
        router = UpstreamPool(ssl_context=worker_context(pki["router"].cert, pki["router"].key, ca))
        agent = UpstreamPool(ssl_context=worker_context(pki["agent"].cert, pki["agent"].key, ca))
        plain = UpstreamPool()
        try:
            ok = await router.request("127.0.0.1", port, "POST", "/v2/models/mlp/infer",
                                      headers, body, timeout=5)  # fmt: skip
            assert ok.status == 200 and b'"outputs"' in ok.body
            refused = await agent.request("127.0.0.1", port, "POST", "/v2/models/mlp/infer",
                                          headers, body, timeout=5)  # fmt: skip
            assert refused.status == 403
            with pytest.raises(UpstreamError):  # plaintext to a TLS worker: dropped
                await plain.request("127.0.0.1", port, "POST", "/v2/models/mlp/infer",
                                    headers, body, timeout=2)  # fmt: skip
            assert worker_context(None, None, ca) is None  # no certificate: plaintext pool
        finally:
            for pool in (router, agent, plain):
                pool.close()


def test_a_renewed_certificate_is_loaded_for_new_connections(
    pki: dict[str, ServerFiles], tmp_path: Path
) -> None:
    import os

    from worker.access import CertificateReloader, server_context

    w = pki["worker"]
    context = server_context(str(w.cert), str(w.key), str(w.ca))
    reloader = CertificateReloader(context, w.cert, w.key)
    assert not reloader.reload_if_changed()  # nothing changed
    w.key.write_bytes(b"half-written")  # a torn pair keeps the old certificate
    os.utime(w.key, (1, 1))
    assert not reloader.reload_if_changed()
    fresh = write_issued(
        CertificateAuthority.create(), Role.WORKER, tmp_path / "fresh", name="worker"
    )
    w.cert.write_bytes(fresh.cert.read_bytes())
    w.key.write_bytes(fresh.key.read_bytes())
    assert reloader.reload_if_changed() and reloader.reloads == 1
