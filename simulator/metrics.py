"""Bounded-memory results: log-binned latency histograms and per-region counters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["LatencyHistogram", "PolicyResult"]

FloatArray = npt.NDArray[np.float64]


class LatencyHistogram:
    """Counts in log-spaced bins (200 per decade, 0.01 ms .. 1e7 ms): quantiles within 1.2%."""

    PER_DECADE = 200
    LOG_LO = -2.0
    DECADES = 9

    def __init__(self) -> None:
        self.n_bins = self.PER_DECADE * self.DECADES
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.total = 0.0
        self.n = 0

    def add(self, values: FloatArray) -> None:
        if len(values) == 0:
            return
        logs = np.log10(np.maximum(values, 1e-3))
        idx = ((logs - self.LOG_LO) * self.PER_DECADE).astype(np.int64)
        np.clip(idx, 0, self.n_bins - 1, out=idx)
        self.counts += np.bincount(idx, minlength=self.n_bins)
        self.total += float(values.sum())
        self.n += len(values)

    def edges(self) -> FloatArray:
        out: FloatArray = 10 ** (self.LOG_LO + np.arange(self.n_bins + 1) / self.PER_DECADE)
        return out

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return float("nan")
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, q * self.n))
        e = self.edges()
        return float(np.sqrt(e[i] * e[i + 1]))  # geometric middle of the bin

    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def fraction_at_most(self, x: float) -> float:
        if self.n == 0:
            return float("nan")
        i = int(np.searchsorted(self.edges(), x, side="right")) - 1
        return float(self.counts[: max(i, 0)].sum()) / self.n


@dataclass
class PolicyResult:
    """Everything one policy's run produced."""

    policy: str
    regions: tuple[str, ...]
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    overhead: LatencyHistogram = field(default_factory=LatencyHistogram)  # latency - service
    requests: int = 0  # distinct client requests
    completed: int = 0
    failed: int = 0  # gave up: retries exhausted or no region could serve
    retried: int = 0  # attempts beyond a request's first
    slo_met: int = 0
    wait_ms_total: float = 0.0  # queueing delay summed over completed requests
    served: FloatArray = field(default_factory=lambda: np.zeros(0))  # per region
    busy_ms: FloatArray = field(default_factory=lambda: np.zeros(0))
    server_ms: FloatArray = field(default_factory=lambda: np.zeros(0))
    flows: FloatArray = field(default_factory=lambda: np.zeros(0))  # (clients, regions)
    timeline: FloatArray = field(default_factory=lambda: np.zeros(0))  # (seconds, regions) sent
    wall_s: float = 0.0
    refused: int = 0  # refused at the router on arrival (503), never placed
    refused_by_class: FloatArray = field(default_factory=lambda: np.zeros(0))
    within_deadline: int = 0  # completed within ``deadline_ms`` of the client's first send
    deadline_ms: float = 0.0
    duration_s: float = 0.0
    fleet_capacity_rps: float = 0.0  # the fleet's GPUs at the mean service time

    def goodput_rps(self) -> float:
        """Requests completed within their deadline per second of the run."""
        return self.within_deadline / self.duration_s if self.duration_s > 0 else 0.0

    def within_share(self) -> float:
        """Share of all requests (refused ones included) completed within the deadline."""
        return self.within_deadline / max(self.requests, 1)

    def utilization(self) -> FloatArray:
        out: FloatArray = self.busy_ms / np.maximum(self.server_ms, 1e-9)
        return out

    def summary(self) -> dict[str, Any]:
        lat, ovh = self.latency, self.overhead
        return {
            "policy": self.policy,
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "retried": self.retried,
            "mean_ms": round(lat.mean(), 2),
            "p50_ms": round(lat.quantile(0.50), 2),
            "p95_ms": round(lat.quantile(0.95), 2),
            "p99_ms": round(lat.quantile(0.99), 2),
            "mean_queue_wait_ms": round(self.wait_ms_total / max(self.completed, 1), 3),
            "overhead_p50_ms": round(ovh.quantile(0.50), 2),
            "overhead_p99_ms": round(ovh.quantile(0.99), 2),
            "slo_attainment": round(self.slo_met / max(self.requests, 1), 5),
            "refused": self.refused,
            "deadline_ms": self.deadline_ms,
            "within_deadline": round(self.within_share(), 5),
            "goodput_rps": round(self.goodput_rps(), 1),
            "goodput_over_capacity": round(
                self.goodput_rps() / max(self.fleet_capacity_rps, 1e-9), 4
            ),
            "utilization": {
                n: round(float(u), 3) for n, u in zip(self.regions, self.utilization(), strict=True)
            },
            "max_utilization": round(float(self.utilization().max()), 3),
            "sim_requests_per_wall_s": round(self.requests / max(self.wall_s, 1e-9)),
        }
