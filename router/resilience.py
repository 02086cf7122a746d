"""Failure handling policies: a per-region circuit breaker and a retry budget.

Both are plain objects over a clock passed in (``time.monotonic`` seconds), so
tests drive them with plain numbers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["BreakerState", "CircuitBreaker", "RetryBudget"]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Ejects a region after ``threshold`` consecutive failures, then probes it back.

    While open, the region is skipped. After ``cooldown`` seconds one request is let
    through (half-open): success closes the breaker, failure opens it again with the
    cooldown doubled (up to ``max_cooldown``).
    """

    threshold: int = 3
    cooldown: float = 1.0
    max_cooldown: float = 30.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    current_cooldown: float = 0.0
    probe_in_flight: bool = False

    def allows(self, now: float) -> bool:
        """May a request go to this region now? (Claims the probe slot when half-open.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.current_cooldown:
            self.state = BreakerState.HALF_OPEN
            self.probe_in_flight = False
        if self.state is BreakerState.HALF_OPEN and not self.probe_in_flight:
            self.probe_in_flight = True
            return True
        return False

    def is_open(self, now: float) -> bool:
        """Read-only view for ranking: True while the region must be skipped."""
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.OPEN:
            return now - self.opened_at < self.current_cooldown
        return self.probe_in_flight

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.current_cooldown = 0.0
        self.probe_in_flight = False

    def record_failure(self, now: float) -> None:
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self._open(now, min(self.max_cooldown, max(self.cooldown, self.current_cooldown * 2)))
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._open(now, self.cooldown)

    def _open(self, now: float, cooldown: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.current_cooldown = cooldown
        self.probe_in_flight = False


@dataclass
class RetryBudget:
    """Retries stay a bounded fraction of traffic so an outage cannot multiply the load.

    Every first attempt deposits ``ratio`` tokens (capped at ``cap``); every retry
    spends one. ``min_per_second`` tokens accrue regardless, so a quiet router can
    still retry.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    cap: float = 100.0
    tokens: float = 10.0
    last: float = 0.0

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.cap, self.tokens + (now - self.last) * self.min_per_second)
            self.last = now

    def record_request(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_retry(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
