"""Hedged requests ("The Tail at Scale"): when an attempt has waited longer than the
model's recent p95 latency at this router, a second copy goes to another worker and the
first answer wins. Hedges are bounded by their own token bucket, as retries are.

Plain objects over plain numbers (``time.monotonic`` seconds passed in).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from router.resilience import RetryBudget

__all__ = ["HedgeConfig", "Hedging", "LatencyWindow"]


class LatencyWindow:
    """The last ``size`` attempt latencies of one kind of request, and their p95
    (recomputed every ``every`` new samples: sorting per request would cost more)."""

    def __init__(self, size: int = 256, every: int = 16) -> None:
        self._samples: collections.deque[float] = collections.deque(maxlen=size)
        self._every = every
        self._fresh = 0
        self._p95: float | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, ms: float) -> None:
        self._samples.append(ms)
        self._fresh += 1
        if self._p95 is None or self._fresh >= self._every:
            self._recompute()

    def _recompute(self) -> None:
        ordered = sorted(self._samples)
        self._p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        self._fresh = 0

    @property
    def p95(self) -> float | None:
        return self._p95


@dataclass(frozen=True, slots=True)
class HedgeConfig:
    ratio: float = 0.1  # hedges per request, at most (the bucket's refill)
    burst: float = 5.0  # hedges the bucket holds
    min_samples: int = 20  # no hedging before this many observations of the model
    min_delay_ms: float = 2.0  # never hedge sooner than this


@dataclass
class Hedging:
    """Per model (and streamed or not): when to hedge; and the budget that bounds it."""

    config: HedgeConfig = field(default_factory=HedgeConfig)
    windows: dict[tuple[str, bool], LatencyWindow] = field(default_factory=dict)
    budget: RetryBudget = field(init=False)

    def __post_init__(self) -> None:
        c = self.config
        self.budget = RetryBudget(ratio=c.ratio, min_per_second=0.0, cap=c.burst, tokens=c.burst)

    def observe(self, model: str, streamed: bool, ms: float) -> None:
        window = self.windows.get((model, streamed))
        if window is None:
            window = self.windows[(model, streamed)] = LatencyWindow()
        window.add(ms)

    def delay_s(self, model: str, streamed: bool) -> float | None:
        """Seconds after which an attempt is hedged; None: not enough known to hedge."""
        window = self.windows.get((model, streamed))
        if window is None or len(window) < self.config.min_samples or window.p95 is None:
            return None
        return max(window.p95, self.config.min_delay_ms) / 1000.0

    def p95_ms(self, model: str, streamed: bool) -> float | None:
        window = self.windows.get((model, streamed))
        return None if window is None else window.p95
