"""Progressive rollouts as real processes: two control-plane replicas (PostgreSQL + etcd),
three regions with agents and stand-in workers, a router, clients near every region.

A good version reaches 100% in every region, wave by wave. A version that fails 20% of
requests, one 5x slower, and one whose outputs differ are each rolled back during the
first wave, with the failed user requests bounded by the canary share, and the old
version serving everywhere afterwards. A leader change in the middle of a rollout resumes
it where it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from meridian.waiting import wait_until
from tests.e2e.rollout_fleet import SITES, Clients, RolloutFleet, rollout_fleet

pytestmark = pytest.mark.slow

QUICK_STEPS = [0.25, 1.0]

FIRST_WAVE = [SITES[0].name]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolloutFleet]:
    with rollout_fleet(tmp_path_factory.mktemp("rollouts")) as f:
        yield f


@pytest.fixture
def clients(fleet: RolloutFleet) -> Iterator[Clients]:
    c = Clients(fleet.router_port)
    try:
        c.wait_more(50)
        yield c
    finally:
        c.stop()


def current_version(fleet: RolloutFleet) -> str:
    versions = {d["version"] for d in fleet.deployments()}
    assert len(versions) == 1, versions
    return versions.pop()


def follow(fleet: RolloutFleet, rollout_id: int, timeout: float) -> list[dict[str, Any]]:
    """Every distinct (state, wave, step) the rollout goes through until it ends."""
    seen: list[dict[str, Any]] = []

    def ended() -> bool:
        r = fleet.rollout(rollout_id)
        key = (r["state"], r["wave"], r["step"])
        if not seen or (seen[-1]["state"], seen[-1]["wave"], seen[-1]["step"]) != key:
            seen.append({**r, "seen_at": time.monotonic()})
        return r["state"] in ("completed", "rolled_back", "aborted")

    try:
        wait_until(ended, timeout=timeout, interval=0.1, what=f"rollout {rollout_id} ends")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; last seen: {seen[-1] if seen else None}") from None
    return seen


def assert_old_everywhere(fleet: RolloutFleet, clients: Clients, version: str) -> None:
    deployments = fleet.deployments()
    assert {d["version"] for d in deployments} == {version}
    assert sorted(d["region"] for d in deployments) == sorted(s.name for s in SITES)
    assert all(d["traffic_weight"] == 1.0 for d in deployments)
    after = time.monotonic() + 1.0  # the routers' snapshot follows within a second
    wait_until(lambda: len(clients.since(after)) >= 150, timeout=60, what="traffic after")
    late = clients.since(after)
    assert {a.version for a in late} == {version}, {a.version for a in late}
    assert all(a.status == 200 for a in late)
    assert {a.region for a in late} == {s.name for s in SITES}


def test_a_good_version_reaches_every_region_wave_by_wave(
    fleet: RolloutFleet, clients: Clients
) -> None:
    old = current_version(fleet)
    fleet.add_version("2")
    started = time.monotonic()
    # default waves: the smallest region, then by continent; two steps a wave (the canary
    # step's bound is the bad versions' test)
    created = fleet.create(old, "2", steps=QUICK_STEPS)
    assert created["waves"] == [[s.name] for s in SITES]
    seen = follow(fleet, created["id"], timeout=180)
    final = seen[-1]
    assert final["state"] == "completed", final
    positions = [(r["wave"], r["step"]) for r in seen if r["state"] == "running"]
    assert positions == sorted(positions)  # never backwards
    assert {w for w, s in positions if s == len(final["steps"]) - 1} == {0, 1, 2}
    window = clients.since(started)
    failed = [a for a in window if a.status != 200]
    assert len(failed) <= 0.01 * len(window), failed[:5]
    # wave by wave: the new version answered first in the first wave's region, last in the last
    first_new = [min(a.at for a in window if a.version == "2" and a.region == s.name)
                 for s in SITES]  # fmt: skip
    assert first_new == sorted(first_new)
    audit = fleet.audit(created["id"])
    steps = [e for e in audit if e["action"] == "step" and e["detail"]["figures"]]
    assert steps and all(
        f["verdict"] == "pass" and f["new_requests"] >= 30
        for e in steps
        for f in e["detail"]["figures"].values()
    )
    assert_old_everywhere(fleet, clients, "2")
    print(f"\ngood rollout: {time.monotonic() - started:.1f} s, {len(window)} requests, "
          f"{len(failed)} failed")  # fmt: skip


@pytest.mark.parametrize(
    ("version", "gate"),
    [("fails", "error rate"), ("slow", "latency p99"), ("other", "output drift")],
)
def test_a_bad_version_is_rolled_back_in_the_first_wave(
    fleet: RolloutFleet, clients: Clients, version: str, gate: str
) -> None:
    old = current_version(fleet)
    fleet.add_version(version)
    started = time.monotonic()
    created = fleet.create(old, version)
    seen = follow(fleet, created["id"], timeout=120)
    final = seen[-1]
    took = final["seen_at"] - started
    assert final["state"] == "rolled_back", final
    assert final["wave"] == 0 and final["waves"][0] == FIRST_WAVE
    assert gate in final["reason"], final["reason"]
    share = max((r["share"] for r in seen), default=0.0)
    window = clients.since(started)
    window = [a for a in window if a.at <= final["seen_at"]]
    failed = [a for a in window if a.status != 200]
    canary = [a for a in window if a.version == version]
    # the bound: failed user requests never exceed the canary's share of all requests
    assert share > 0 and len(failed) <= share * len(window), (len(failed), share, len(window))
    assert all(a.region in FIRST_WAVE for a in canary)  # no other region saw it
    audit = fleet.audit(created["id"])
    rollback = next(e for e in audit if e["action"] == "rollback")
    judged = rollback["detail"]["figures"][FIRST_WAVE[0]]
    assert judged["verdict"] == "fail" and judged["new_requests"] >= 30  # enough samples
    assert_old_everywhere(fleet, clients, old)
    print(f"\n{version}: rolled back after {took:.1f} s at share {share:.0%}: "
          f"{len(failed)} of {len(window)} user requests failed "
          f"(bound {share * len(window):.0f}); {len(canary)} answered by the canary")  # fmt: skip


def test_a_leader_change_mid_rollout_resumes_where_it_was(
    fleet: RolloutFleet, clients: Clients
) -> None:
    old = current_version(fleet)
    fleet.add_version("next")
    created = fleet.create(old, "next", steps=QUICK_STEPS)
    rid = created["id"]
    wait_until(lambda: fleet.rollout(rid)["wave"] >= 1 and fleet.rollout(rid)["step"] >= 0,
               timeout=120, what="the second wave under way")  # fmt: skip
    leader = fleet.leader()
    assert leader is not None
    victim = next(r for r in fleet.fleet.replicas if r.url == leader)
    before = fleet.rollout(rid)
    killed = time.monotonic()
    victim.child.kill_group()
    wait_until(lambda: fleet.leader() not in (None, leader), timeout=30, what="a new leader")
    led = time.monotonic() - killed
    seen = follow(fleet, rid, timeout=180)
    at = (before["wave"], before["step"])
    moved = [r["seen_at"] - killed for r in seen if (r["wave"], r["step"]) > at]
    assert seen[-1]["state"] == "completed", seen[-1]
    resumed = [(r["wave"], r["step"]) for r in seen if r["state"] == "running"]
    assert all(p >= (before["wave"], before["step"]) for p in resumed), (before, resumed)
    creates = [e for e in fleet.audit(rid) if e["action"] == "deploy"]
    placed = [r for e in creates for r in e["detail"]["regions"]]
    assert sorted(placed) == sorted(s.name for s in SITES)  # each region placed once
    assert_old_everywhere(fleet, clients, "next")
    print(
        f"\nleader change at wave {before['wave'] + 1} step {before['step'] + 1}: a new "
        f"leader after {led:.1f} s, the next move {moved[0]:.1f} s after the kill"
    )
