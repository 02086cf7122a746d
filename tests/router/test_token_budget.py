"""Token budgets per API key: two real routers share one key's budget through Redis."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import httpx
import pytest

from meridian.keyring import ApiKeyGrant, ApiKeyring
from meridian.waiting import wait_until_async
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from router.token_budget import USAGE_PREFIX, LocalTokenBudget, estimate_tokens
from tests.router.generative import WorkerProcess, generative_snapshot, tiny_model, workers

__all__ = ["tiny_model", "workers"]  # module-scoped fixtures used here

EDGE = "x-meridian-client-location"


def test_reservations_refill_and_settle_on_plain_numbers() -> None:
    b = LocalTokenBudget()
    assert b.reserve_now("k", 600, 500, now=0.0) == 0.0
    assert b.reserve_now("k", 600, 500, now=0.0) == pytest.approx(40.0)  # 400 short, 10/s
    assert b.reserve_now("k", 600, 150, now=5.0) == 0.0  # 100 + 50 refilled
    assert estimate_tokens("/v1/completions", {"prompt": [1, 2, 3], "max_tokens": 7}) == 10
    assert estimate_tokens("/v1/completions", {"prompt": "abcdefgh"}) == 3 + 256
    assert estimate_tokens("/v1/embeddings", {"input": "abcd"}) == 2


async def _usage(redis_url: str, name: str) -> dict[str, int]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = await client.hgetall(USAGE_PREFIX + name)
    finally:
        await client.aclose()
    return {k.decode(): int(v) for k, v in raw.items()}


async def _router(tmp_path: Path, workers: dict[str, WorkerProcess], redis_url: str,
                  grant: ApiKeyGrant) -> RouterServer:  # fmt: skip
    settings = RouterSettings(port=0, snapshot_path=tmp_path / f"{uuid.uuid4().hex}.json",
                              require_api_key=True, redis_url=redis_url)  # fmt: skip
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(
        generative_snapshot(
            {"near": (workers["near"], 10.0, 10.0), "far": (workers["far"], 40.0, 40.0)}
        )
    )
    server.keyring.offer(ApiKeyring(1, 0.0, (grant,)))
    await server.start()
    return server


@pytest.mark.redis
async def test_two_routers_share_a_keys_token_budget_through_redis(
    tmp_path: Path, workers: dict[str, WorkerProcess], redis_url: str
) -> None:
    name = "tpm-" + uuid.uuid4().hex[:8]
    grant = ApiKeyGrant(name, hashlib.sha256(b"tpm-key").hexdigest(), 1000, 1000,
                        tokens_per_minute=600)  # fmt: skip
    a = await _router(tmp_path, workers, redis_url, grant)
    b = await _router(tmp_path, workers, redis_url, grant)
    headers = {"x-api-key": "tpm-key", EDGE: "11,11"}
    body = {"model": "tiny", "prompt": [5, 6, 7, 8], "max_tokens": 250, "temperature": 0,
            "ignore_eos": True}  # fmt: skip
    try:
        async with httpx.AsyncClient(headers=headers, timeout=30) as c:
            # a stream that the client leaves after one chunk gives back what it did not use
            url_a = f"http://127.0.0.1:{a.port}/v1/completions"
            streamed = body | {"max_tokens": 500, "stream": True}
            async with c.stream("POST", url_a, json=streamed) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line.startswith("data:"):
                        break

            # 504 were reserved; once the router has settled the stream, a few are used
            async def stream_settled() -> bool:
                return (await _usage(redis_url, name)).get("requests") == 1

            await wait_until_async(stream_settled, timeout=10, what="the stream's tokens settled")
            # two requests of 254 still fit, on either router
            r1 = await c.post(url_a, json=body)
            assert r1.status_code == 200, r1.text
            r2 = await c.post(f"http://127.0.0.1:{b.port}/v1/completions", json=body)
            assert r2.status_code == 200, r2.text
            # 508 + the stream's few used of 600: router b refuses the third
            r3 = await c.post(f"http://127.0.0.1:{b.port}/v1/completions", json=body)
            assert r3.status_code == 429
            assert int(r3.headers["retry-after"]) >= 1
            assert "used its tokens" in r3.json()["error"]["message"]
            too_big = body | {"max_tokens": 700}
            r4 = await c.post(url_a, json=too_big)
            assert r4.status_code == 429 and "lower max_tokens" in r4.json()["error"]["message"]
        usage = await _usage(redis_url, name)
        assert usage["requests"] == 3  # the stream and the two admitted requests
        assert usage["prompt_tokens"] == 12
        # two times 250, and the stream's first tokens
        assert 500 < usage["completion_tokens"] < 600
    finally:
        await a.stop()
        await b.stop()
