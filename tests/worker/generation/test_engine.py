"""The engine end to end on a tiny random GPT-2: requests, limits, caching, cancellation."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from meridian.errors import InvalidInput, Unavailable
from tests.worker.generation.conftest import EngineFactory
from worker.generation.engine import Engine
from worker.generation.factory import open_generation_engine
from worker.generation.settings import GenerationSettings
from worker.generation.types import GenerationEngine, SamplingParams, TokenEvent

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


async def events_of(engine: Engine, prompt: list[int], params: SamplingParams) -> list[TokenEvent]:
    return [e async for e in engine.generate(prompt, params, "req")]


def tokens_of(events: list[TokenEvent]) -> list[int]:
    return [e.token_id for e in events if e.token_id is not None]


async def wait_for(predicate: object, what: str, timeout: float = 20.0) -> None:
    from meridian.waiting import wait_until_async

    await wait_until_async(predicate, timeout=timeout, interval=0.005, what=what)  # type: ignore[arg-type]


async def test_events_carry_text_counts_and_one_finish(engine_factory: EngineFactory) -> None:
    async with engine_factory() as engine:
        prompt = engine.encode("The quick brown fox")
        events = await events_of(engine, prompt, GREEDY)
    assert len(events) == 12
    assert [e.finish_reason for e in events] == [None] * 11 + ["length"]
    assert [e.completion_tokens for e in events] == list(range(1, 13))
    assert all(e.prompt_tokens == len(prompt) for e in events)
    assert "".join(e.text for e in events) == engine.decode(tokens_of(events))


async def test_max_model_len_ends_the_sequence_with_length(engine_factory: EngineFactory) -> None:
    async with engine_factory(max_model_len=20) as engine:
        assert engine.max_model_len == 20
        events = await events_of(engine, list(range(1, 16)), GREEDY)
        assert len(events) == 5 and events[-1].finish_reason == "length"
        with pytest.raises(InvalidInput, match="at most 19"):
            engine.generate(list(range(1, 21)), GREEDY, "too-long")


@pytest.mark.parametrize(
    ("prompt", "params", "message"),
    [
        ([], GREEDY, "no tokens"),
        ([1, 99999], GREEDY, "outside the vocabulary"),
        ([1], SamplingParams(max_tokens=0), "max_tokens"),
        ([1], SamplingParams(top_p=0.0), "top_p"),
        ([1], SamplingParams(temperature=-1.0), "temperature"),
    ],
)
async def test_bad_requests_are_refused_at_once(
    engine_factory: EngineFactory, prompt: list[int], params: SamplingParams, message: str
) -> None:
    async with engine_factory() as engine:
        with pytest.raises(InvalidInput, match=message):
            engine.generate(prompt, params, "bad")


async def test_stop_string_cuts_the_text(engine_factory: EngineFactory) -> None:
    async with engine_factory() as engine:
        prompt = engine.encode("Open the file")
        long = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
        full = "".join(e.text for e in await events_of(engine, prompt, long))
        stop = full[8:11]
        assert len(stop) == 3
        cut = await events_of(
            engine, prompt, SamplingParams(max_tokens=30, temperature=0.0, stop=(stop, "\x00"))
        )
    assert cut[-1].finish_reason == "stop"
    assert "".join(e.text for e in cut) == full[: full.index(stop)]
    assert len(cut) < 30


async def test_eos_stops_unless_ignored(tiny_gpt2: Path, tmp_path: Path) -> None:
    settings = GenerationSettings(kv_cache_tokens=1024, block_size=4)
    probe = open_generation_engine(tiny_gpt2, settings, name="probe", device="cpu")
    await probe.start()
    prompt = [5, 6, 7]
    greedy = tokens_of(await events_of(probe, prompt, GREEDY))
    await probe.stop()
    # the same weights, with the third greedy token declared end-of-sequence
    first = greedy[2]
    model = tmp_path / "eos-model"
    shutil.copytree(tiny_gpt2, model)
    for name in ("config.json", "generation_config.json"):
        data = json.loads((model / name).read_text())
        data["eos_token_id"] = first
        (model / name).write_text(json.dumps(data))
    engine = open_generation_engine(model, settings, name="eos", device="cpu")
    await engine.start()
    try:
        stopped = await events_of(engine, prompt, SamplingParams(max_tokens=12, temperature=0.0))
        ignored = await events_of(engine, prompt, GREEDY)
    finally:
        await engine.stop()
    assert stopped[-1].finish_reason == "stop" and len(stopped) == greedy.index(first) + 1
    assert stopped[-1].token_id == first
    assert len(ignored) == 12 and ignored[-1].finish_reason == "length"


async def test_same_seed_same_tokens_whatever_the_batch(engine_factory: EngineFactory) -> None:
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=11)
    prompt = [10, 20, 30, 40]
    async with engine_factory() as engine:
        alone = tokens_of(await events_of(engine, prompt, params))
        others = [
            asyncio.create_task(
                events_of(engine, [7] * n, SamplingParams(max_tokens=20, temperature=1.0, seed=n))
            )
            for n in (3, 9, 30)
        ]
        crowded = tokens_of(await events_of(engine, prompt, params))
        await asyncio.gather(*others)
        reseeded = tokens_of(
            await events_of(engine, prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=12))
        )
    assert alone == crowded
    assert alone != reseeded


async def test_prefix_hits_are_counted_in_tokens(engine_factory: EngineFactory) -> None:
    shared = list(range(1, 41))  # ten blocks of 4
    async with engine_factory() as engine:
        first = await events_of(engine, shared, GREEDY)
        second = await events_of(engine, [*shared, 77, 78], GREEDY)
        stats = engine.stats()
    assert first[0].cached_tokens == 0
    assert second[0].cached_tokens == 40
    assert (stats.prefix_queries, stats.prefix_hits) == (40 + 42, 40)
    assert stats.prefix_hit_rate == pytest.approx(40 / 82)


async def test_least_recently_used_prefixes_are_evicted(engine_factory: EngineFactory) -> None:
    a, b, c = ([k] * 40 for k in (3, 4, 5))
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    # 24 blocks of 4 tokens: room for about two of the three prompts
    async with engine_factory(kv_cache_tokens=96) as engine:
        for prompt in (a, b, c):
            await events_of(engine, prompt, params)
        again_c = await events_of(engine, c, params)
        again_a = await events_of(engine, a, params)
    assert again_c[0].cached_tokens == 36  # the last token is always recomputed
    assert again_a[0].cached_tokens < 36


async def test_closing_the_iterator_frees_blocks_within_a_step(
    engine_factory: EngineFactory,
) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    async with engine_factory(prefix_caching=False) as engine:
        stream = engine.generate(list(range(1, 30)), long, "gone")
        await anext(stream)
        await anext(stream)
        assert engine.stats().kv_blocks_used > 0
        closed_at = engine.steps
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_for(lambda: engine.stats().kv_blocks_used == 0, "blocks freed")
        # the step in flight when it closed, and at most one more
        assert engine.steps <= closed_at + 2
        assert engine.stats().running == 0


async def test_a_cancelled_consumer_aborts_its_sequence(engine_factory: EngineFactory) -> None:
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(list(range(1, 30)), long, "cancelled"):
            got_one.set()

    async with engine_factory() as engine:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_one.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(lambda: engine.stats().running == 0, "sequence aborted")
        assert engine.stats().kv_blocks_used == 0
        # the engine keeps serving
        assert len(await events_of(engine, [1, 2, 3], GREEDY)) == 12


async def test_stop_aborts_what_is_in_flight(engine_factory: EngineFactory) -> None:
    long = SamplingParams(max_tokens=10_000, temperature=0.0, ignore_eos=True)
    async with engine_factory(max_model_len=256) as engine:
        stream = engine.generate([1, 2, 3], long, "in-flight")
        await anext(stream)
        await engine.stop()
        rest = [e async for e in stream]
        assert rest[-1].finish_reason == "abort"
        with pytest.raises(Unavailable):
            await anext(engine.generate([1], GREEDY, "late"))


def test_chat_prompt_uses_the_template(tiny_gpt2: Path) -> None:
    # the engine is what transports take: the contract's protocol
    engine: GenerationEngine = open_generation_engine(
        tiny_gpt2, GenerationSettings(kv_cache_tokens=64), name="chat", device="cpu"
    )
    ids = engine.chat_prompt([{"role": "user", "content": "hello"}])
    assert engine.decode(ids) == "<|user|>hello\n<|assistant|>"


async def test_a_failed_step_fails_its_sequences_and_the_engine_goes_on(
    engine_factory: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine_factory() as engine:
        runner = engine._runner
        real_forward = runner.forward

        def broken(inputs: object) -> object:
            monkeypatch.setattr(runner, "forward", real_forward)  # fails once
            raise RuntimeError("device lost")

        monkeypatch.setattr(runner, "forward", broken)
        with pytest.raises(Unavailable, match="generation failed: RuntimeError"):
            await events_of(engine, [1, 2, 3], GREEDY)
        assert engine.stats().kv_blocks_used == 0
        assert len(await events_of(engine, [1, 2, 3], GREEDY)) == 12


async def test_a_queued_sequence_past_its_deadline_is_dropped_before_its_prefill(
    engine_factory: EngineFactory,
) -> None:
    import time

    from meridian.errors import UpstreamTimeout

    async with engine_factory(max_num_seqs=1) as engine:
        prompt = engine.encode("The quick brown fox")
        long = SamplingParams(max_tokens=400, temperature=0.0, ignore_eos=True)
        busy = engine.generate(prompt, long, "busy")
        first = await anext(busy)  # it runs: the one slot is taken
        assert first.token_id is not None
        prefilled = engine.counters().prefill_tokens
        other = engine.encode("A different prompt, never computed")
        started = time.monotonic()
        late = engine.generate(other, GREEDY, "late", time.monotonic() + 0.05)
        with pytest.raises(UpstreamTimeout, match="dropped before its prefill"):
            await anext(late)
        waited = time.monotonic() - started
        assert 0.05 <= waited < 2.0  # dropped at the next step after its deadline
        assert engine.counters().deadline_dropped == 1
        assert engine.counters().prefill_tokens == prefilled  # its prompt never ran
        # a deadline it can meet: served once the slot is free
        await busy.aclose()
        served = [e async for e in engine.generate(other, GREEDY, "ok", time.monotonic() + 30)]
        assert served[-1].finish_reason == "length"
        assert engine.counters().deadline_dropped == 1
