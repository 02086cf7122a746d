"""Per model version and region figures: what routers count and rollout gates judge.

A router keeps one :class:`VersionFigures` per (model, version, region) it has sent
requests to: answered and failed attempts, a latency histogram, a time-to-first-token
histogram for streams, and the comparisons of mirrored requests (a share of the old
version's requests also sent to the new one, the replies compared and discarded). It
reports them cumulatively; the control plane subtracts two reports to get a window.
The histogram buckets are fixed and shared, so histograms from many routers add up.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BUCKETS_MS", "FigureKey", "VersionFigures", "bucket_of", "quantile_ms"]

# upper bounds of the latency buckets, ms: 1 ms to ~100 s, 12 buckets per factor of ten
BUCKETS_MS: tuple[float, ...] = tuple(round(10 ** (i / 12), 3) for i in range(0, 61))

FigureKey = tuple[str, str, str]  # model, version, region


def bucket_of(ms: float) -> int:
    """The index of the bucket holding ``ms`` (the last one holds everything above)."""
    return min(bisect.bisect_left(BUCKETS_MS, ms), len(BUCKETS_MS) - 1)


def quantile_ms(counts: list[int], q: float) -> float | None:
    """The ``q`` quantile of a histogram over :data:`BUCKETS_MS` (its bucket's upper
    bound, so never below the true value); None when it is empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = math.ceil(q * total)
    seen = 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return BUCKETS_MS[min(i, len(BUCKETS_MS) - 1)]
    return BUCKETS_MS[-1]


def _zeros() -> list[int]:
    return [0] * len(BUCKETS_MS)


@dataclass(slots=True)
class VersionFigures:
    """Counts since a router started (or, as a difference, over a window)."""

    requests: int = 0  # attempts answered or failed by this version
    errors: int = 0  # of them: 5xx, timeouts, broken connections
    latency: list[int] = field(default_factory=_zeros)  # answered attempts, ms buckets
    ttft: list[int] = field(default_factory=_zeros)  # streams: time to first token
    mirrored: int = 0  # old-version requests also sent here and compared
    mirror_errors: int = 0  # of them: this version failed
    drift_sum: float = 0.0  # summed distance (cosine distance, or 1 per disagreement)

    def answered(self, ms: float) -> None:
        self.requests += 1
        self.latency[bucket_of(ms)] += 1

    def failed(self) -> None:
        self.requests += 1
        self.errors += 1

    def first_token(self, ms: float) -> None:
        self.ttft[bucket_of(ms)] += 1

    def compared(self, distance: float | None) -> None:
        self.mirrored += 1
        if distance is None:
            self.mirror_errors += 1
        else:
            self.drift_sum += distance

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def drift(self) -> float | None:
        """Mean distance over the compared mirrors (None when none was)."""
        n = self.mirrored - self.mirror_errors
        return self.drift_sum / n if n > 0 else None

    def p99_ms(self) -> float | None:
        return quantile_ms(self.latency, 0.99)

    def ttft_p99_ms(self) -> float | None:
        return quantile_ms(self.ttft, 0.99)

    def add(self, other: VersionFigures) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.mirrored += other.mirrored
        self.mirror_errors += other.mirror_errors
        self.drift_sum += other.drift_sum
        for i, n in enumerate(other.latency):
            self.latency[i] += n
        for i, n in enumerate(other.ttft):
            self.ttft[i] += n

    def minus(self, earlier: VersionFigures) -> VersionFigures:
        """What happened since ``earlier`` (the same counters, read before)."""
        return VersionFigures(
            requests=self.requests - earlier.requests,
            errors=self.errors - earlier.errors,
            latency=[a - b for a, b in zip(self.latency, earlier.latency, strict=True)],
            ttft=[a - b for a, b in zip(self.ttft, earlier.ttft, strict=True)],
            mirrored=self.mirrored - earlier.mirrored,
            mirror_errors=self.mirror_errors - earlier.mirror_errors,
            drift_sum=self.drift_sum - earlier.drift_sum,
        )

    def covers(self, earlier: VersionFigures) -> bool:
        """Whether these counters can follow ``earlier`` (no counter went down: the same
        router, not restarted)."""
        return self.requests >= earlier.requests and self.mirrored >= earlier.mirrored

    def to_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "latency": list(self.latency),
            "ttft": list(self.ttft),
            "mirrored": self.mirrored,
            "mirror_errors": self.mirror_errors,
            "drift_sum": round(self.drift_sum, 6),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionFigures:
        return cls(
            requests=int(data.get("requests", 0)),
            errors=int(data.get("errors", 0)),
            latency=_dense(data.get("latency", ())),
            ttft=_dense(data.get("ttft", ())),
            mirrored=int(data.get("mirrored", 0)),
            mirror_errors=int(data.get("mirror_errors", 0)),
            drift_sum=float(data.get("drift_sum", 0.0)),
        )


def _dense(counts: Any) -> list[int]:
    """A histogram as sent: one count per bucket of :data:`BUCKETS_MS` (missing: 0)."""
    out = _zeros()
    for i, n in enumerate(list(counts)[: len(out)]):
        out[i] = int(n)
    return out
