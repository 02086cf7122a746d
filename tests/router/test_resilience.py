from __future__ import annotations

from router.resilience import BreakerState, CircuitBreaker, RetryBudget


def test_breaker_opens_after_threshold_and_probes_back() -> None:
    b = CircuitBreaker(threshold=3, cooldown=1.0)
    for t in (0.0, 0.1):
        b.record_failure(t)
        assert b.allows(t)
    b.record_failure(0.2)
    assert b.state is BreakerState.OPEN
    assert not b.allows(0.5) and b.is_open(0.5)
    assert b.allows(1.3)  # half-open: one probe
    assert not b.allows(1.31)  # only one probe at a time
    b.record_failure(1.4)  # probe failed: open again, longer
    assert b.state is BreakerState.OPEN and b.current_cooldown == 2.0
    assert not b.allows(2.5)
    assert b.allows(3.5)
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allows(3.6)


def test_retry_budget_bounds_retries_to_a_fraction_of_traffic() -> None:
    budget = RetryBudget(ratio=0.1, min_per_second=0.0, cap=1000.0, tokens=0.0)
    retries = 0
    for i in range(1000):
        now = i * 0.001
        budget.record_request(now)
        if budget.try_retry(now):
            retries += 1
    assert 95 <= retries <= 100


def test_retry_budget_refills_slowly_when_quiet() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=2.0, cap=5.0, tokens=0.0)
    assert not budget.try_retry(0.0)
    assert budget.try_retry(0.6)  # 1.2 tokens accrued
    assert not budget.try_retry(0.7)
