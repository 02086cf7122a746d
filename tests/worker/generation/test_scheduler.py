"""The scheduler and its policies on plain sequences (no model)."""

from __future__ import annotations

import pydantic
import pytest

from worker.generation.kv_cache import BlockPool
from worker.generation.sampling import make_generator
from worker.generation.scheduler import (
    ContinuousPolicy,
    Scheduled,
    Scheduler,
    SchedulingPolicy,
    StaticPolicy,
)
from worker.generation.sequence import IncrementalText, Sequence
from worker.generation.settings import GenerationSettings
from worker.generation.types import SamplingParams

BS = 4


def seq(name: str, prompt: list[int]) -> Sequence:
    return Sequence(
        request_id=name,
        tokens=list(prompt),
        prompt_len=len(prompt),
        params=SamplingParams(max_tokens=100, temperature=0.0),
        max_len=1000,
        generator=make_generator(0),
        text=IncrementalText(lambda ids: "", ()),
    )


def scheduler(
    blocks: int = 64,
    *,
    max_num_seqs: int = 8,
    budget: int = 64,
    chunk: int = 16,
    policy: SchedulingPolicy | None = None,
    prefix_caching: bool = True,
) -> Scheduler:
    return Scheduler(
        BlockPool(blocks, prefix_caching=prefix_caching),
        block_size=BS,
        max_num_seqs=max_num_seqs,
        max_batched_tokens=budget,
        prefill_chunk=chunk,
        policy=policy or ContinuousPolicy(),
    )


def run(s: Scheduler) -> list[Scheduled]:
    """One step as the engine does it: schedule, compute, sample token 1."""
    step = s.schedule()
    s.commit(step)
    for item in step:
        if item.seq.num_computed == len(item.seq.tokens):
            item.seq.tokens.append(1)
    return step


def plan(step: list[Scheduled]) -> dict[str, int]:
    return {i.seq.request_id: i.num_tokens for i in step}


def test_long_prompts_are_chunked_and_decodes_go_first() -> None:
    s = scheduler(budget=20, chunk=16)
    a = seq("a", list(range(3)))
    s.add(a)
    assert plan(run(s)) == {"a": 3}
    b = seq("b", list(range(40)))
    s.add(b)
    # a decodes (1 token); b gets a 16-token chunk of its prompt
    assert plan(run(s)) == {"a": 1, "b": 16}
    assert plan(run(s)) == {"a": 1, "b": 16}
    assert plan(run(s)) == {"a": 1, "b": 8}
    assert b.num_computed == 40 and len(b.tokens) == 41
    assert plan(run(s)) == {"a": 1, "b": 1}


def test_admission_stops_at_max_num_seqs_and_token_budget() -> None:
    s = scheduler(max_num_seqs=2, budget=64)
    for name in "abc":
        s.add(seq(name, [1, 2, 3]))
    assert set(plan(run(s))) == {"a", "b"}
    assert [q.request_id for q in s.waiting] == ["c"]

    t = scheduler(budget=10, chunk=8)
    for name in "abc":
        t.add(seq(name, list(range(8))))
    assert plan(run(t)) == {"a": 8, "b": 2}


def test_static_policy_admits_only_into_an_empty_batch() -> None:
    s = scheduler(policy=StaticPolicy(), budget=8, chunk=8)
    for name in "ab":
        s.add(seq(name, list(range(8))))
    # both join at once, though the budget only covers a's prompt this step
    assert plan(run(s)) == {"a": 8}
    assert [q.request_id for q in s.running] == ["a", "b"]
    s.add(seq("c", [1, 2]))
    assert plan(run(s)) == {"a": 1, "b": 7}
    for q in list(s.running):
        s.remove(q)
    assert plan(run(s)) == {"c": 2}


def test_most_recently_admitted_sequence_is_preempted_and_requeued_first() -> None:
    s = scheduler(blocks=4, budget=64)
    a, b = seq("a", list(range(8))), seq("b", list(range(100, 108)))
    s.add(a)
    s.add(b)
    run(s)  # a and b hold 2 blocks each; both caches are now full
    s.add(seq("c", [5]))
    step = run(s)  # a's 9th token needs a third block: b gives way
    assert plan(step) == {"a": 1}
    assert s.counters.preemptions == 1
    assert [q.request_id for q in s.waiting] == ["b", "c"]
    assert b.num_computed == 0 and b.block_table == []
    assert len(b.tokens) == 9  # keeps what it generated; recomputed later


def test_shared_prefix_is_computed_once() -> None:
    s = scheduler()
    prompt = list(range(10))
    a = seq("a", prompt)
    s.add(a)
    run(s)
    b = seq("b", [*prompt, 42])
    s.add(b)
    step = run(s)
    # two full blocks (8 tokens) came from the cache; b computes the other 3
    assert plan(step)["b"] == 3
    assert b.cached_tokens == 8
    assert b.block_table[:2] == a.block_table[:2]
    assert s.pool.refs(a.block_table[0]) == 2
    assert (s.counters.prefix_queries, s.counters.prefix_hits) == (10 + 11, 8)


def test_a_whole_cached_prompt_still_computes_its_last_token() -> None:
    s = scheduler()
    a = seq("a", list(range(8)))
    s.add(a)
    run(s)
    b = seq("b", list(range(8)))
    s.add(b)
    assert plan(run(s))["b"] == 4
    assert b.cached_tokens == 4


def test_no_prefix_reuse_when_caching_is_off() -> None:
    s = scheduler(prefix_caching=False)
    s.add(seq("a", list(range(10))))
    run(s)
    b = seq("b", list(range(10)))
    s.add(b)
    assert plan(run(s))["b"] == 10
    assert s.counters.prefix_hits == 0 and s.counters.prefix_queries == 0


def test_running_batch_never_outgrows_the_token_budget() -> None:
    s = scheduler(max_num_seqs=8, budget=3, chunk=1)
    for name in "abcde":
        s.add(seq(name, [1]))
    for _ in range(3):
        step = run(s)
        assert set(plan(step)) == {"a", "b", "c"}  # each running sequence every step
    assert len(s.running) == 3


def test_settings_refuse_what_cannot_work() -> None:
    with pytest.raises(pydantic.ValidationError, match="at least one block"):
        GenerationSettings(kv_cache_tokens=8, block_size=16)
    with pytest.raises(pydantic.ValidationError, match="policy"):
        GenerationSettings(policy="fifo")  # type: ignore[arg-type]


def test_a_waiting_sequence_past_its_deadline_is_dropped_before_its_prefill() -> None:
    now = [100.0]
    s = Scheduler(
        BlockPool(64, prefix_caching=True), block_size=BS, max_num_seqs=1,
        max_batched_tokens=64, prefill_chunk=16, policy=ContinuousPolicy(),
        clock=lambda: now[0],
    )  # fmt: skip
    first, late, patient, timely = (seq(n, [1, 2, 3, 4, 5]) for n in "abcd")
    late.deadline = 100.5
    timely.deadline = 200.0
    for x in (first, late, patient, timely):
        s.add(x)
    assert s.next_deadline() == 100.5
    assert [i.seq for i in run(s)] == [first]  # one at a time: the others wait
    assert s.take_expired() == []
    now[0] = 101.0  # late's deadline passes while it waits
    run(s)
    assert s.take_expired() == [late]
    assert late not in s.waiting and late.block_table == [] and not late.admitted
    assert s.counters.deadline_dropped == 1
    assert s.next_deadline() == 200.0
    # the running one is never dropped; finishing it lets the next in line start
    s.remove(first)
    assert [i.seq for i in run(s)] == [patient]
    s.remove(patient)
    now[0] = 150.0
    assert [i.seq for i in run(s)] == [timely]  # started before its deadline
    assert s.next_deadline() is None
    now[0] = 300.0  # a started sequence is never dropped, even preempted to the queue
    s._preempt(timely)
    run(s)
    assert s.take_expired() == [] and s.counters.deadline_dropped == 1
    assert s.next_deadline() is None
