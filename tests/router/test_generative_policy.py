"""KV-cache-aware pricing of generative requests, on plain data."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

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


# the simulator's engine figures (bench.llm, docs/simulation.md): 11,377 prefill tokens/s,
# 2.4 ms a step alone and 15.4 ms at 64 sequences, mean prompt 1,434 and output 154 tokens
ENGINE = GenerativeCosts(
    block_chars=256,
    chars_per_token=4.0,
    max_seqs=64,
    prefill_tokens_per_s=11_377.0,
    tpot_ms=2.4,
    tpot_load_factor=5.4,
    mean_output_tokens=154.0,
    mean_prompt_tokens=1434.0,
)


def _holder_and_cold(holder_load: int, cold_load: int) -> list[WorkerCandidate]:
    return [
        WorkerCandidate("eu", "holder", 10.0, running=holder_load),
        WorkerCandidate("eu", "cold", 10.0, running=cold_load),
    ]


def test_a_prefix_hit_beats_a_slightly_less_loaded_cold_worker() -> None:
    prompt = "p" * 256 * 20  # 1,280 tokens, 16 blocks of them cached at the holder
    req = GenerativeRequest("llm", len(prompt), 154, prefix_key(prompt, 256))
    policy = KvAwarePolicy(ENGINE)
    choice = policy.choose(req, _holder_and_cold(12, 10), {"holder": 16})
    assert choice is not None and choice.worker_id == "holder" and choice.cached_blocks == 16
    # the saving is the cached tokens' prefill, stretched by the holder's busy prefill
    even = _holder_and_cold(10, 10)
    ranked = {w.worker_id: w.cost_ms for w in policy.rank(req, even)}
    cached = {w.worker_id: w.cost_ms for w in policy.rank(req, even, {"holder": 16})}
    saved = ENGINE.prefill_ms(16 * 256) / (1.0 - ENGINE.prefill_busy(10))
    assert abs((ranked["holder"] - cached["holder"]) - saved) < 1e-6
    assert saved > ENGINE.prefill_ms(16 * 256)  # worth more than its own prefill on a busy worker


def test_a_badly_overloaded_holder_loses() -> None:
    prompt = "p" * 256 * 20
    req = GenerativeRequest("llm", len(prompt), 154, prefix_key(prompt, 256))
    # by price alone (no load bound): 60 sequences queued there against 8 on a cold worker
    unbounded = KvAwarePolicy(replace(ENGINE, epsilon=100.0, load_slack=1000.0))
    choice = unbounded.choose(req, _holder_and_cold(60, 8), {"holder": 16})
    assert choice is not None and choice.worker_id == "cold"
    # and by the load bound: over (1 + epsilon) x the mean load, the hit is not credited
    bounded = KvAwarePolicy(ENGINE)
    ranked = bounded.rank(req, _holder_and_cold(40, 8), {"holder": 16})
    assert ranked[0].worker_id == "cold"
    holder = next(w for w in ranked if w.worker_id == "holder")
    assert holder.load_capped and holder.cached_blocks == 0


def test_a_shared_leading_block_does_not_hide_a_longer_prefix() -> None:
    """The ``ways`` bound drops a worker from a hot leading block; chained hashes still
    say it was sent that block, so its longer match counts."""
    aff = PrefixAffinity(ways=2)
    turn1 = prefix_key(SYSTEM + "first turn of a conversation " * 10, 64)
    aff.record(turn1, "w1")
    for other in ("w2", "w3", "w4"):  # the system prompt goes elsewhere after that
        aff.record(prefix_key(SYSTEM + f"another user {other}", 64), other)
    matched = aff.matched_blocks(prefix_key(SYSTEM + "first turn of a conversation " * 12, 64))
    assert matched["w1"] == len(turn1)
