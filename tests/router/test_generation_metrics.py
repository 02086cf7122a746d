"""The router's generative metrics after real streams through a real router to real
workers: time to first token and per output token per region, the prefix-affinity hit
rate, and a stream's outstanding count lasting until the stream ends."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.generative import WorkerProcess, generative_snapshot, tiny_model, workers

__all__ = ["tiny_model", "workers"]  # module-scoped fixtures used here

NEAR = {"x-meridian-client-location": "11,11"}
# longer than a few 64-character prefix blocks, so the KV-aware policy keys it
PROMPT = "Once upon a time in a land of quiet rivers and tall green hills " * 4


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_streams_give_ttft_tpot_and_affinity_and_hold_their_worker(
    tmp_path: Path, workers: dict[str, WorkerProcess]
) -> None:
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "snap.json")
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(
        generative_snapshot(
            {"near": (workers["near"], 10.0, 10.0), "far": (workers["far"], 40.0, 40.0)}
        )
    )
    await server.start()
    core = server.core
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "temperature": 0,
            "ignore_eos": True, "stream": True}  # fmt: skip
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}", headers=NEAR, timeout=60
        ) as c:
            for n in range(2):  # the same prompt twice: the second goes where it went
                tokens = 0
                async with c.stream("POST", "/v1/completions", json=body) as r:
                    assert r.status_code == 200
                    assert r.headers["x-meridian-region"] == "near"
                    async for line in r.aiter_lines():
                        if line.startswith("data:") and line != "data: [DONE]":
                            tokens += 1
                            if tokens == 1:  # mid-stream: the worker is still loaded
                                assert core.outstanding["near-w1"] == 1
                assert tokens > 1  # events (an event may carry several tokens)
                assert core.outstanding["near-w1"] == 0, f"stream {n} ended"
            text = (await c.get("/metrics")).text
    finally:
        await server.stop()
    got = _samples(text)
    near = (("region", "near"),)
    ttft_n = got[("meridian_router_region_ttft_seconds_count", near)]
    ttft_sum = got[("meridian_router_region_ttft_seconds_sum", near)]
    assert ttft_n == 2
    assert 0.0 < ttft_sum / ttft_n < 5.0
    tpot_n = got[("meridian_router_region_tpot_seconds_count", near)]
    tpot_sum = got[("meridian_router_region_tpot_seconds_sum", near)]
    assert tpot_n == 2
    assert 0.0 < tpot_sum / tpot_n < 1.0
    # every bucket line is cumulative and ends with all observations at +Inf
    le_inf = (*near, ("le", "+Inf"))
    assert got[("meridian_router_region_ttft_seconds_bucket", tuple(sorted(le_inf)))] == 2
    assert ("meridian_router_region_ttft_seconds_count", (("region", "far"),)) not in got
    assert got[("meridian_router_prefix_affinity_requests_total", ())] == 2
    assert got[("meridian_router_prefix_affinity_hits_total", ())] == 1  # the second
    assert got[("meridian_router_prefix_affinity_hit_ratio", ())] == 0.5
