"""The retry budget: retries stay a bounded fraction of traffic.

A plain object over a clock passed in (``time.monotonic`` seconds), so
tests drive them with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RetryBudget"]


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
