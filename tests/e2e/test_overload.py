"""Overload without collapse, with real processes on loopback.

Three stand-in workers of fixed capacity (``bench/busy_worker.py --slots``) as three
regions behind a ``meridian router`` process with capacity admission. Their capacity is
measured first; then twice that is offered, open loop, every request with a deadline.
What is admitted finishes well within its deadline, everything else is refused at once
(503 with ``Retry-After``), and every request gets an answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench._overload_fleet import measure_capacity, offer, overload_fleet, summarise

DEADLINE_MS = 1000.0
SECONDS = 5.0
REFUSAL_MS = 5.0


async def test_twice_the_capacity_is_served_within_deadlines_and_the_rest_refused_at_once(
    tmp_path: Path,
) -> None:
    async with overload_fleet(tmp_path, delay_ms=100.0, slots=2) as fleet:
        capacity = await measure_capacity(fleet.worker_urls, 2.0, 2 * fleet.slots)
        assert 30.0 < capacity <= 60.0 * 1.05  # 3 workers x 2 slots / 100 ms, less overhead
        client = await fleet.start_router(
            capacity / 3, ["--admit-interactive-load", "2", "--admit-batch-load", "1"]
        )
        try:
            outcomes = await offer(client, 2 * capacity, SECONDS, deadline_ms=DEADLINE_MS)
        finally:
            await client.close()
    s = summarise(outcomes, SECONDS, DEADLINE_MS)
    refusals = np.array([o.latency_ms for o in outcomes if o.status == 503])
    within = float(np.mean(refusals <= REFUSAL_MS)) if refusals.size else 0.0
    router_ms = [o.router_ms for o in outcomes if o.status == 503]
    timed = np.array([ms for ms in router_ms if ms is not None])
    router_p50, router_p90, router_p99 = (
        np.percentile(timed, [50, 90, 99]) if timed.size else [float("nan")] * 3
    )
    print(
        f"\ncapacity {capacity:.1f}/s, offered {s.offered} in {SECONDS:g} s: {s.ok} ok, "
        f"{s.refused} refused, {s.expired} expired, {s.unanswered} unanswered; goodput "
        f"{s.goodput_rps:.1f}/s; admitted p50 {s.admitted_p50_ms:.0f} ms p99 "
        f"{s.admitted_p99_ms:.0f} ms (deadline {DEADLINE_MS:g}); refusals p50 "
        f"{s.refusal_p50_ms:.2f} ms p99 {s.refusal_p99_ms:.2f} ms max {s.refusal_max_ms:.1f} ms, "
        f"{within:.1%} within {REFUSAL_MS:g} ms; router's own time p99 {router_p99:.3f} ms"
    )
    assert s.unanswered == 0 and s.others == 0  # every request answered: 200, 503 or 504
    assert s.offered > 1.5 * capacity * SECONDS  # the load really was about twice capacity
    assert s.refused > 0.25 * s.offered  # the excess was refused...
    assert s.refused_without_retry_after == 0  # ...every time with Retry-After
    assert s.admitted_p99_ms < DEADLINE_MS  # what was admitted finished in time
    assert s.expired <= 0.01 * s.offered
    assert s.goodput_rps > 0.7 * capacity  # and the fleet kept serving near its capacity
    # refusals are answered at once: the router decides in well under a millisecond of its
    # own time (its Server-Timing header says how long), so what the client sees beyond
    # that is loopback and scheduling, and a shared 2-core machine adds its own tail (even
    # to the router's own clock, when it is preempted mid-request: the p99 is the
    # benchmark's figure, bench.overload, on a quiet machine)
    assert None not in router_ms  # every refusal says how long the router took
    assert router_p50 < 0.5 and router_p90 < 1.0, (router_p50, router_p90, router_p99)
    assert s.refusal_p50_ms < REFUSAL_MS
    # none of them waited for a service slot (100 ms each) or the deadline (1,000 ms); the
    # share within 5 ms at the client is printed, not bounded: under load it is the
    # machine's (79% with CPU hogs beside the test, router p99 0.38 ms in the same run)
    assert s.refusal_max_ms < 250.0
