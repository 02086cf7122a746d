"""KV-cache-aware pricing of generative requests, on plain data."""

from __future__ import annotations

from collections import Counter

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot, WorkerView
from router.policies import (
    GenerativeCosts,
    GenerativeRequest,
    KvAwarePolicy,
    PrefixAffinity,
    WorkerCandidate,
    choose_generative,
    prefix_key,
)

SYSTEM = "You are a helpful assistant who answers briefly. " * 40  # 2,000 characters


def _request(prompt: str, max_tokens: int = 16) -> GenerativeRequest:
    return GenerativeRequest("llm", len(prompt), max_tokens, prefix_key(prompt))


def test_prefix_key_is_chained_over_full_blocks() -> None:
    a = prefix_key("x" * 64 + "a" * 64 + "tail", 64)
    b = prefix_key("x" * 64 + "b" * 64, 64)
    assert len(a) == 2  # the 4-character tail is not a full block
    assert a[0] == b[0]
    assert a[1] != b[1]
    # same second block after a different first one: chained, so a different hash
    assert prefix_key("y" * 64 + "a" * 64, 64)[1] != a[1]


def test_affinity_matches_the_longest_shared_prefix_per_worker() -> None:
    aff = PrefixAffinity()
    aff.record(prefix_key(SYSTEM + "question one", 64), "w1")
    aff.record(prefix_key(SYSTEM[:640], 64), "w2")
    matched = aff.matched_blocks(prefix_key(SYSTEM + "another question", 64))
    assert matched["w1"] == len(SYSTEM) // 64
    assert matched["w2"] == 10
    assert "w3" not in matched


def test_affinity_is_bounded() -> None:
    aff = PrefixAffinity(capacity=5)
    aff.record(prefix_key("z" * 64 * 10, 64), "w1")
    assert len(aff) == 5
    # the oldest (leading) hashes went first, so the chain no longer matches from the start
    assert aff.matched_blocks(prefix_key("z" * 64 * 10, 64)) == {}


def test_affinity_forgets_what_a_worker_must_have_evicted() -> None:
    aff = PrefixAffinity(worker_blocks=8)
    old = prefix_key("a" * 64 * 6, 64)
    aff.record(old, "w1")
    aff.record(old, "w2")
    aff.record(prefix_key("b" * 64 * 6, 64), "w1")  # 12 blocks sent to w1: 4 of "a" gone
    matched = aff.matched_blocks(old)
    assert "w1" not in matched  # its leading blocks were the oldest
    assert matched["w2"] == 6


def test_requests_sharing_a_prefix_follow_it() -> None:
    policy = KvAwarePolicy(GenerativeCosts(prefill_tokens_per_s=1000))
    workers = [WorkerCandidate("eu", f"w{i}", rtt_ms=10.0) for i in range(4)]
    first = policy.choose(_request(SYSTEM + "q0"), workers)
    assert first is not None
    policy.record(_request(SYSTEM + "q0"), first.worker_id)
    for i in range(1, 5):
        choice = policy.choose(_request(SYSTEM + f"q{i}"), workers)
        assert choice is not None
        assert choice.worker_id == first.worker_id
        assert choice.cached_blocks == len(SYSTEM) // 64


def test_a_hot_prefix_spills_past_the_load_bound() -> None:
    costs = GenerativeCosts(prefill_tokens_per_s=1000, epsilon=0.25, load_slack=2)
    policy = KvAwarePolicy(costs)
    load = {f"w{i}": 0 for i in range(4)}
    placed: Counter[str] = Counter()
    for i in range(40):  # every request shares the prefix; none finishes
        req = _request(SYSTEM + f"q{i}")
        workers = [WorkerCandidate("eu", w, 10.0, running=n) for w, n in load.items()]
        choice = policy.choose(req, workers)
        assert choice is not None
        policy.record(req, choice.worker_id)
        load[choice.worker_id] += 1
        placed[choice.worker_id] += 1
    mean = 40 / 4
    assert max(placed.values()) <= (1 + 0.25) * mean + 2 + 1
    assert len(placed) >= 3  # spilled, and the spill workers now hold the prefix too


def test_near_uncached_region_against_far_cached_region_is_decided_by_the_numbers() -> None:
    prompt = SYSTEM + "the question"  # 500 prompt tokens, 31 blocks cached at "far"
    req = _request(prompt)
    near = WorkerCandidate("near", "n1", rtt_ms=5.0)
    far = WorkerCandidate("far", "f1", rtt_ms=80.0)
    cached = {"f1": len(SYSTEM) // 64}

    slow_prefill = KvAwarePolicy(GenerativeCosts(prefill_tokens_per_s=1000))  # 500 ms to prefill
    choice = slow_prefill.choose(req, [near, far], cached)
    assert choice is not None and choice.region == "far"

    fast_prefill = KvAwarePolicy(GenerativeCosts(prefill_tokens_per_s=50_000))  # 10 ms
    choice = fast_prefill.choose(req, [near, far], cached)
    assert choice is not None and choice.region == "near"
    # and the cost difference is the prefill saved against the RTT paid
    ranked = fast_prefill.rank(req, [near, far], cached)
    by_region = {c.region: c.cost_ms for c in ranked}
    saved = 1000 * ((len(SYSTEM) // 64) * 64 / 4) / 50_000
    assert abs((by_region["far"] - by_region["near"]) - (75.0 - saved)) < 1e-6


def test_a_full_worker_is_charged_its_wait_for_a_slot() -> None:
    policy = KvAwarePolicy(GenerativeCosts(max_seqs=4, tpot_ms=10, mean_output_tokens=100))
    busy = WorkerCandidate("eu", "busy", 1.0, running=4, waiting=4)
    idle = WorkerCandidate("us", "idle", 90.0)
    choice = policy.choose(_request("hello"), [busy, idle])
    assert choice is not None and choice.worker_id == "idle"


def test_choose_generative_reads_the_snapshot_and_records_affinity() -> None:
    def worker(wid: str, running: int) -> WorkerView:
        return WorkerView(
            wid, f"http://{wid}", HealthState.HEALTHY, ("llm:1",), running_seqs=running
        )

    down = WorkerView("x", "http://x", HealthState.DOWN, ("llm:1",))
    snap = RoutingSnapshot(
        version=1,
        generated_at=0.0,
        regions=(
            RegionView("eu", HealthState.HEALTHY, 0, 0, workers=(worker("a", 3), down)),
            RegionView("us", HealthState.HEALTHY, 0, 0, workers=(worker("b", 0),)),
        ),
    )
    policy = KvAwarePolicy()
    req = _request(SYSTEM)
    ranked = choose_generative(policy, snap, req, {"eu": 5.0, "us": 5.0})
    assert [w.worker_id for w in ranked] == ["b", "a"]
    assert policy.affinity.matched_blocks(req.key) == {"b": len(SYSTEM) // 64}
    assert (
        choose_generative(policy, snap, req, {"eu": 5.0, "us": 5.0}, exclude=("us",))[0].worker_id
        == "a"
    )
