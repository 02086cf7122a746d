"""One suite for every coordination backend: in-process and real etcd."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from meridian.coordination import (
    Coordination,
    Election,
    EventKind,
    InProcessCoordination,
    Lease,
    LeaseExpired,
    WatchEvent,
    keep_alive,
    open_coordination,
)
from meridian.waiting import wait_until_async


@pytest.fixture(params=["memory", "etcd"])
async def coord(request: pytest.FixtureRequest) -> AsyncIterator[Coordination]:
    if request.param == "memory":
        backend: Coordination = InProcessCoordination()
    else:
        endpoint = request.getfixturevalue("etcd_endpoint")
        backend = open_coordination(f"etcd://{endpoint}")
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
def prefix() -> str:
    return f"/test/coord-{uuid.uuid4().hex[:10]}/"


async def next_event(events: AsyncIterator[WatchEvent], timeout: float = 3.0) -> WatchEvent:
    return await asyncio.wait_for(anext(events), timeout)


async def test_put_get_delete(coord: Coordination, prefix: str) -> None:
    key = prefix + "a"
    assert await coord.get(key) is None
    rev1 = await coord.put(key, b"one")
    rev2 = await coord.put(key, b"two")
    assert rev2 > rev1
    kv = await coord.get(key)
    assert kv is not None and kv.value == b"two" and kv.mod_revision == rev2
    assert kv.create_revision == rev1
    assert await coord.delete(key) is True
    assert await coord.delete(key) is False
    assert await coord.get(key) is None


async def test_put_if_absent_is_a_transaction(coord: Coordination, prefix: str) -> None:
    key = prefix + "once"
    results = await asyncio.gather(*(coord.put_if_absent(key, b"%d" % i) for i in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    kv = await coord.get(key)
    assert kv is not None and kv.value == b"%d" % results.index(True)


async def test_get_prefix_sorted_and_scoped(coord: Coordination, prefix: str) -> None:
    for name in ("b", "a", "c"):
        await coord.put(prefix + "r/" + name, name.encode())
    await coord.put(prefix + "other", b"x")
    items, revision = await coord.get_prefix(prefix + "r/")
    assert [kv.key for kv in items] == [prefix + "r/a", prefix + "r/b", prefix + "r/c"]
    assert revision >= max(kv.mod_revision for kv in items)


async def test_watch_key_sees_puts_and_deletes_in_order(coord: Coordination, prefix: str) -> None:
    key = prefix + "w"
    async with await coord.watch(key) as watch:
        events = aiter(watch)
        await coord.put(prefix + "unrelated", b"-")
        await coord.put(key, b"1")
        await coord.put(key, b"2")
        await coord.delete(key)
        got = [await next_event(events) for _ in range(3)]
    assert [(e.kind, e.value) for e in got] == [
        (EventKind.PUT, b"1"),
        (EventKind.PUT, b"2"),
        (EventKind.DELETE, b""),
    ]
    assert got[0].revision < got[1].revision < got[2].revision


async def test_watch_prefix_and_start_revision(coord: Coordination, prefix: str) -> None:
    first = await coord.put(prefix + "p/x", b"early")
    async with await coord.watch(prefix + "p/", prefix=True, start_revision=first) as watch:
        events = aiter(watch)
        await coord.put(prefix + "p/y", b"late")
        await coord.put(prefix + "q", b"outside")
        got = [await next_event(events) for _ in range(2)]
    assert [(e.key, e.value) for e in got] == [
        (prefix + "p/x", b"early"),
        (prefix + "p/y", b"late"),
    ]


async def test_lease_expiry_deletes_keys_and_is_seen_by_watchers(
    coord: Coordination, prefix: str
) -> None:
    lease = await coord.grant_lease(1)
    key = prefix + "leased"
    async with await coord.watch(key) as watch:
        events = aiter(watch)
        await coord.put(key, b"alive", lease=lease)
        assert (await next_event(events)).kind == EventKind.PUT
        start = time.monotonic()
        gone = await next_event(events, timeout=6.0)
    assert gone.kind == EventKind.DELETE
    assert time.monotonic() - start < 5.0
    assert await coord.get(key) is None
    with pytest.raises(LeaseExpired):
        await lease.refresh()


async def test_keepalive_keeps_a_lease_past_its_ttl_and_revoke_ends_it(
    coord: Coordination, prefix: str
) -> None:
    lease = await coord.grant_lease(1)
    key = prefix + "kept"
    await coord.put(key, b"v", lease=lease)
    keeper = asyncio.create_task(keep_alive(lease, interval=0.2))
    try:
        async with await coord.watch(key) as watch:
            pending = asyncio.ensure_future(anext(aiter(watch)))
            done, _ = await asyncio.wait({pending}, timeout=2.5)  # well past the 1 s TTL
            assert not done, "the kept-alive key must not expire"
            assert await coord.get(key) is not None
            await lease.revoke()
            assert (await asyncio.wait_for(pending, 3)).kind == EventKind.DELETE
    finally:
        keeper.cancel()
        with pytest.raises((asyncio.CancelledError, LeaseExpired)):
            await keeper


async def test_election_one_leader_then_handover_on_resign_and_expiry(
    coord: Coordination, prefix: str
) -> None:
    leases = [await coord.grant_lease(2) for _ in range(3)]
    keepers = [asyncio.create_task(keep_alive(lease, interval=0.3)) for lease in leases]
    try:
        await _election_walk(coord, prefix, leases)
    finally:
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)


async def _election_walk(coord: Coordination, prefix: str, leases: list[Lease]) -> None:
    elections = [Election(coord, "cp", root=prefix) for _ in range(3)]
    first = asyncio.create_task(elections[0].campaign(b"a", leases[0]))
    await asyncio.wait_for(first, 3)
    others = []
    for i, name in ((1, b"b"), (2, b"c")):  # one after the other: b queues ahead of c
        others.append(asyncio.create_task(elections[i].campaign(name, leases[i])))
        await wait_until_async(
            lambda n=i + 1: _count(coord, elections[0].prefix, n), timeout=3, what="candidacy"
        )
    observer = Election(coord, "cp", root=prefix).observe()
    assert await anext(observer) == b"a"
    done, _ = await asyncio.wait(others, timeout=0.5)
    assert not done, "a second candidate must not lead while the first holds the lease"
    assert await elections[0].is_leader()

    await elections[0].resign()
    await asyncio.wait_for(others[0], 3)
    assert await asyncio.wait_for(anext(observer), 3) == b"b"
    assert not others[1].done()

    # the leader dies without resigning: its lease expires and the last candidate leads
    start = time.monotonic()
    await leases[1].revoke()
    await asyncio.wait_for(others[1], 5)
    assert time.monotonic() - start < 3
    assert await asyncio.wait_for(anext(observer), 3) == b"c"
    current = await elections[2].leader()
    assert current is not None and current.value == b"c"
    await observer.aclose()
    await leases[2].revoke()
    with pytest.raises(LeaseExpired):
        await elections[2].campaign(b"c", leases[2])


async def _count(coord: Coordination, prefix: str, n: int) -> bool:
    items, _ = await coord.get_prefix(prefix)
    return len(items) == n


def test_open_coordination_rejects_unknown_urls() -> None:
    with pytest.raises(ValueError, match="memory://"):
        open_coordination("zookeeper://x:1")
    assert isinstance(open_coordination("memory://"), InProcessCoordination)
