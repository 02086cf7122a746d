from __future__ import annotations

from router.resilience import RetryBudget


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
