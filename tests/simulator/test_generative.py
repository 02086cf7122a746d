"""The generative fleet simulation: prefix caches, prefill cost, failover, policies."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from meridian.cli import main as meridian_main
from router.admission import sequence_load
from router.policies import GenerativeRequest, WorkerCandidate
from simulator.data import Places, Trace
from simulator.genengine import REFUSED_FULL, REFUSED_LATE, GenConfig, GenFleet, GenSimulation
from simulator.genpolicies import KvRouter, costs_for, make_router
from simulator.genscenarios import GenWorld, build_gen_fleet, gen_standard, run_gen
from simulator.genworkload import GenWorkload, Prefixes


@pytest.fixture(scope="module")
def world() -> GenWorld:
    return GenWorld.load()  # the shipped extracts


def one_worker_sim(chains: tuple[tuple[int, ...], ...]) -> GenSimulation:
    """One city, one region with one engine, a flat trace of 1,280-token prompts."""
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    n = 100
    trace = Trace("flat", np.linspace(0, 3600, n), np.full(n, 1280.0), np.full(n, 10.0))
    workload = GenWorkload(places, trace, Prefixes(chains), 1.0, tenants=1)
    fleet = GenFleet(("r0",), np.zeros(1), np.zeros(1), np.array([1]))
    cfg = GenConfig(duration_s=10.0)
    router = make_router("nearest", costs_for(cfg.service, 1280.0, 10.0))
    sim = GenSimulation(router, fleet, workload, cfg)
    sim._publish(0.0)
    return sim


def send(sim: GenSimulation, t_ms: float, record: int) -> float:
    """Route one 1,280-token request; its time to first token (ms)."""
    before = sim.result.ttft.total
    sim._route([(t_ms, 0, 0, record, 1280, 10, t_ms, 0, -1)], t_ms)
    return sim.result.ttft.total - before


def test_prefix_cache_hits_shrink_the_prefill() -> None:
    shared = tuple(range(20))  # 20 blocks of 64 tokens: the whole prompt
    sim = one_worker_sim((shared, shared, (100, 101)))
    cold = send(sim, 0.0, 0)
    assert sim.result.cached_tokens == 0
    assert len(sim.cache[0]) == 20  # the engine cached the prompt's blocks
    warm = send(sim, 5_000.0, 1)  # same prefix, engine idle again
    assert sim.result.cached_tokens == 1279  # all but the last token found in the cache
    other = send(sim, 10_000.0, 2)  # a prompt of its own: prefilled in full
    assert sim.result.cached_tokens == 1279
    prefill_full = sim.svc.prefill_ms(1280)
    assert warm < cold - 0.9 * prefill_full
    assert other == pytest.approx(cold, rel=0.01)


def test_the_cache_is_an_lru_of_bounded_size() -> None:
    chains = tuple(tuple(range(i * 20, i * 20 + 20)) for i in range(5))
    sim = one_worker_sim(chains)
    sim.svc = replace(sim.svc, cache_blocks=50)
    for i in range(5):
        send(sim, i * 5_000.0, i)
    assert len(sim.cache[0]) == 50
    assert 0 not in sim.cache[0] and 99 << 8 in sim.cache[0]  # oldest out, newest kept


def test_caches_fill_and_hit_on_the_real_workload(world: GenWorld) -> None:
    results = run_gen(world, gen_standard("gen-steady", 400.0, 6.0), ["meridian", "nearest"])
    m = results["meridian"]
    assert m.requests > 1000 and m.completed == m.requests
    assert m.cached_tokens > 0
    assert m.hit_rate > 0.02
    assert m.ttft.quantile(0.5) > 0 and m.tpot.quantile(0.99) > 0 and m.gpu_s > 0


def test_the_failing_regions_requests_move(world: GenWorld) -> None:
    scenario = gen_standard("gen-region-failure", 400.0, 6.0)
    results = run_gen(world, scenario, ["nearest", "meridian"])
    fleet = build_gen_fleet(world, scenario.rate_rps, GenConfig())
    down = int(np.argmax(fleet.workers))  # the largest region fails at 3 s, seen at 4 s
    for r in results.values():
        per_region = r.timeline.sum(axis=0)
        assert r.timeline[:3, down].sum() > 0
        assert r.timeline[5:, down].sum() == 0  # after the failure is detected: none sent
        assert per_region.sum() >= r.requests
        assert r.completed + r.failed + r.refused == r.requests


def test_kv_aware_beats_nearest_under_a_burst(world: GenWorld) -> None:
    results = run_gen(world, gen_standard("gen-burst", 1500.0, 8.0), ["nearest", "meridian"])
    m, n = results["meridian"], results["nearest"]
    assert m.requests == n.requests  # the same arrivals
    assert m.goodput > 1.01 * n.goodput
    assert m.ttft.quantile(0.99) < 0.8 * n.ttft.quantile(0.99)


def test_oracle_reads_true_caches(world: GenWorld) -> None:
    results = run_gen(world, gen_standard("gen-steady", 300.0, 4.0), ["oracle"])
    assert results["oracle"].cached_tokens > 0
    assert isinstance(make_router("oracle", costs_for(GenConfig().service, 1.0, 1.0)), KvRouter)


def test_cli_runs_a_generative_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MERIDIAN_DATA", raising=False)  # the shipped extracts
    out = tmp_path / "sim"
    args = ["simulate", "--scenario", "gen-steady", "--rate", "300", "--duration", "2"]
    args += ["--policies", "nearest,meridian", "--out", str(out)]
    assert meridian_main(args) == 0
    text = capsys.readouterr().out
    assert "| meridian |" in text and "TTFT p99 ms" in text
    assert "gen-steady.goodput_meridian_over_best_baseline=" in text
    report = json.loads((out / "simulation-generative.json").read_text())
    assert report["gen-steady"]["policies"]["meridian"]["completed"] > 0
    assert (out / "gen-steady.png").stat().st_size > 1000


def test_cli_rejects_an_unknown_generative_policy(tmp_path: Path) -> None:
    args = ["simulate", "--workload", "generative", "--policies", "round-robin"]
    assert meridian_main([*args, "--out", str(tmp_path)]) == 2


def test_least_seen_worker_matches_a_scan_of_the_region() -> None:
    """The per-region heap gives what ``min`` over the region's engines gives (ties: the
    lowest index), as requests are sent and snapshots reset the loads."""
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    trace = Trace("flat", np.linspace(0, 3600, 10), np.full(10, 640.0), np.full(10, 10.0))
    workload = GenWorkload(places, trace, Prefixes(((1, 2),)), 1.0, tenants=1)
    fleet = GenFleet(("r0", "r1"), np.zeros(2), np.zeros(2), np.array([7, 3]))
    cfg = GenConfig(duration_s=10.0)
    sim = GenSimulation(
        make_router("nearest", costs_for(cfg.service, 640.0, 10.0)), fleet, workload, cfg
    )
    rng = random.Random(3)
    for snap in range(3):
        sim._publish(snap * 1000.0)
        for _ in range(200):
            r = rng.randrange(2)
            expect = min(sim.region_workers[r], key=sim.seen.__getitem__)
            assert sim.least_seen(r) == expect
            # send to the least-seen one mostly, elsewhere sometimes: the heap goes stale
            w = expect if rng.random() < 0.7 else rng.choice(sim.region_workers[r])
            sim.sent(w)


def test_the_pruned_pool_chooses_as_pricing_every_worker_would() -> None:
    """Meridian's simulator prices, per region, only the workers no other beats on both
    load and prefix held; with the load bound over every worker, its choice is the one
    ``KvAwarePolicy`` makes over all the candidate regions' workers."""
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    trace = Trace("flat", np.linspace(0, 3600, 10), np.full(10, 1280.0), np.full(10, 50.0))
    chains = tuple(tuple(range(i, i + 20)) for i in range(0, 200, 4))
    workload = GenWorkload(places, trace, Prefixes(chains), 1.0, tenants=1)
    fleet = GenFleet(("r0", "r1"), np.zeros(2), np.array([0.0, 20.0]), np.array([8, 5]))
    cfg = GenConfig(duration_s=10.0)
    router = make_router("meridian-no-admission", costs_for(cfg.service, 1280.0, 50.0))
    assert isinstance(router, KvRouter)
    sim = GenSimulation(router, fleet, workload, cfg)
    sim._publish(0.0)
    rng = random.Random(5)
    differ = 0
    for i in range(300):
        record = rng.randrange(len(chains))
        chain = workload.chain(0, record, 1280)
        w = router.choose(sim, (0, 1280, 50, chain, -1))
        everyone = [
            WorkerCandidate(
                sim.w_name[x], sim.w_str[x], sim.rtt_rows[0][sim.w_region[x]], int(sim.seen[x])
            )
            for x in range(sim.nw)
        ]
        mean = (sum(sim.seen) + 1) / sim.nw
        request = GenerativeRequest("chat", 1280 * 4, 50, router._key)
        full = router.policy.choose(request, everyone, None, mean)
        assert full is not None
        if int(full.worker_id) != w:  # only a tie in price may differ
            differ += 1
            ranked = {
                c.worker_id: c.cost_ms for c in router.policy.rank(request, everyone, None, mean)
            }
            assert ranked[str(w)] == pytest.approx(full.cost_ms)
        sim.sent(w)
        router.placed(sim, w, chain, 1280)
        if i % 100 == 99:
            sim._publish(0.0)  # loads back to what the (idle) engines report
    assert differ < 30


def admitting_sim(ttft_slo_ms: float, max_seqs: int = 64, output: int = 10) -> GenSimulation:
    """One engine at Null Island with Meridian and its admission, 1,280-token prompts of
    ``output`` tokens' answer."""
    places = Places(("Null Island",), np.zeros(1), np.zeros(1), np.ones(1))
    trace = Trace("flat", np.linspace(0, 3600, 10), np.full(10, 1280.0), np.full(10, output))
    workload = GenWorkload(places, trace, Prefixes(((100, 101),)), 1.0, tenants=1)
    fleet = GenFleet(("r0",), np.zeros(1), np.zeros(1), np.array([1]))
    cfg = GenConfig(duration_s=10.0, ttft_slo_ms=ttft_slo_ms)
    cfg = replace(cfg, service=replace(cfg.service, max_seqs=max_seqs))
    router = make_router("meridian", costs_for(cfg.service, 1280.0, float(output)))
    sim = GenSimulation(router, fleet, workload, cfg)
    sim._publish(0.0)
    return sim


def test_admission_refuses_only_a_first_token_that_cannot_come_in_time() -> None:
    """The prompt's prefill alone (1,280 tokens, 112.5 ms on an idle engine) decides:
    a TTFT target under it cannot be met and the request is refused at once (neither
    failed nor completed); a target over it admits the request, which then meets it."""
    prefill = admitting_sim(1000.0).svc.prefill_ms(1280)
    for slo, admitted in ((0.9 * prefill, False), (1.1 * prefill, True)):
        sim = admitting_sim(slo)
        send(sim, 0.0, 0)
        r = sim.result
        assert (r.completed, r.refused_late, r.refused_full, r.failed) == (
            (1, 0, 0, 0) if admitted else (0, 1, 0, 0)
        )
        if admitted:
            assert r.good == 1  # admitted, and the target was met
    # what is left of the budget counts: a retry sent 0.2 x prefill after the first try
    # has 0.9 x prefill left of 1.1 x prefill
    sim = admitting_sim(1.1 * prefill)
    sim._route([(0.2 * prefill, 0, 0, 0, 1280, 10, 0.0, 1, -1)], 0.0)
    assert sim.result.refused_late == 1


def test_admission_refuses_when_the_slots_are_full_or_the_queue_too_long() -> None:
    """One engine with 4 slots and 1,000-token answers (about 3 s each): 4 streams are
    admitted; with the 4 slots held, a fifth would wait about 0.75 s for one, past a
    300 ms TTFT target (refused: deadline), and a load at the ceiling refuses before any
    pricing (refused: capacity); a longer budget admits it."""
    sim = admitting_sim(300.0, max_seqs=4, output=1000)
    router = sim.router
    assert isinstance(router, KvRouter) and router.admission is not None
    sim._route([(0.0, 0, 0, 0, 1280, 1000, 0.0, 0, -1) for _ in range(4)], 0.0)
    assert sim.result.completed == 4 and sim.result.refused == 0
    assert sim.load(0, 200.0) == 4  # all 4 still decoding
    chain = sim.workload.chain(0, 0, 1280)
    assert (sim.held, sim.slots_total) == (4.0, 4.0)
    sim.now, sim.budget_ms = 200.0, 300.0
    assert router.choose(sim, (0, 1280, 1000, chain, -1)) == REFUSED_FULL  # 4 / 4 >= 0.9
    sim.held = 3.0  # under the ceiling: the deadline rule decides
    assert router.choose(sim, (0, 1280, 1000, chain, -1)) == REFUSED_LATE
    sim.budget_ms = 10_000.0
    assert router.choose(sim, (0, 1280, 1000, chain, -1)) == 0


def test_sequence_load_counts_what_the_workers_report() -> None:
    sim = one_worker_sim(((1, 2),))
    assert sequence_load(sim._snapshot(0.0), "chat", 64) == (0.0, 64.0)
    for _ in range(3):
        send(sim, 0.0, 0)
    snap = sim._snapshot(1.0)
    assert sequence_load(snap, "chat", 64) == (3.0, 64.0)
    assert sequence_load(snap, "other", 64) == (0.0, 0.0)


def test_admission_raises_goodput_on_an_overloaded_fleet(world: GenWorld) -> None:
    """35 engines (one or two a region, rated about 330 req/s together) offered about 1,000 req/s
    (the trace's first seconds at 2,000 req/s nominal): Meridian with admission refuses
    part of it at once and serves more streams within both targets than Meridian placing
    everything; no stream it admits waits in a queue for seconds."""
    cfg = GenConfig(duration_s=4.0)
    fleet = build_gen_fleet(world, 100.0, cfg, min_workers=1)
    assert int(fleet.workers.sum()) < 40
    out = {}
    for name in ("meridian", "meridian-no-admission"):
        workload = GenWorkload(world.places, world.trace, world.prefixes, 2000.0, tenants=8)
        costs = costs_for(cfg.service, workload.mean_prompt, workload.mean_output)
        out[name] = GenSimulation(make_router(name, costs), fleet, workload, cfg).run()
    with_, without = out["meridian"], out["meridian-no-admission"]
    assert with_.requests == without.requests > 3000
    assert without.refused == 0 and with_.refused > 0.2 * with_.requests
    assert with_.completed + with_.failed + with_.refused == with_.requests
    assert with_.goodput >= 1.2 * without.goodput
    assert with_.ttft.quantile(0.99) < 0.5 * without.ttft.quantile(0.99)
