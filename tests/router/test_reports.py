"""The router's one client for its reports to the control plane."""

from __future__ import annotations

import httpx

from router.reports import ControlPlaneClient


async def test_a_refusal_is_final_and_an_outage_moves_on() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        if request.url.host == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.host == "busy":
            return httpx.Response(503)
        if request.url.host == "strict":
            return httpx.Response(403, json={"detail": "no"})
        return httpx.Response(202)

    def client(*hosts: str) -> ControlPlaneClient:
        urls = [f"http://{h}" for h in hosts]
        return ControlPlaneClient(urls, "tok", transport=httpx.MockTransport(handler))

    ok = client("down", "busy", "up")
    assert await ok.post("/v1/traffic", {}, "a report")
    assert seen == ["down", "busy", "up"]
    seen.clear()
    refused = client("strict", "up")  # a 4xx is the control plane's answer: not retried
    assert not await refused.post("/v1/traffic", {}, "a report")
    assert seen == ["strict"]
    seen.clear()
    nobody = client("down", "busy")
    assert not await nobody.post("/v1/traffic", {}, "a report")
    assert seen == ["down", "busy"]
    for c in (ok, refused, nobody):
        await c.close()
