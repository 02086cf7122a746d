from __future__ import annotations

import uuid

import pytest

from router.ratelimit import LocalRateLimiter, RedisRateLimiter


def test_local_bucket_allows_burst_then_refills() -> None:
    rl = LocalRateLimiter()
    waits = [rl.acquire_now("k", rate=2.0, burst=3.0, cost=1.0, now=0.0) for _ in range(4)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3] == pytest.approx(0.5)
    assert rl.acquire_now("k", 2.0, 3.0, 1.0, now=0.5) == 0.0


@pytest.mark.redis
async def test_two_router_replicas_share_one_bucket_through_redis(redis_url: str) -> None:
    key = f"test-{uuid.uuid4().hex}"
    a, b = RedisRateLimiter(redis_url), RedisRateLimiter(redis_url)
    try:
        allowed = 0
        for i in range(20):
            limiter = a if i % 2 == 0 else b
            if await limiter.acquire(key, rate=0.01, burst=10.0) == 0.0:
                allowed += 1
        # the bucket holds 10 tokens in all, whichever replica asks
        assert allowed == 10
        wait = await b.acquire(key, rate=0.01, burst=10.0)
        assert wait > 10.0
        assert a.redis_ok and b.redis_ok
    finally:
        await a.close()
        await b.close()


async def test_unreachable_redis_falls_back_to_local_buckets() -> None:
    from meridian.net import free_port

    rl = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2)
    try:
        assert await rl.acquire("k", rate=1.0, burst=1.0) == 0.0
        assert await rl.acquire("k", rate=1.0, burst=1.0) > 0.0
        assert rl.redis_ok is False and rl.last_error
    finally:
        await rl.close()
