"""What one generative run measured (bounded memory: histograms and counters)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from simulator.metrics import LatencyHistogram

__all__ = ["GenResult"]

FloatArray = npt.NDArray[np.float64]


@dataclass(slots=True)
class GenResult:
    policy: str
    regions: tuple[str, ...]
    duration_s: float
    timeline: FloatArray  # (second, region): requests sent
    served: FloatArray  # per region: streams completed
    ttft: LatencyHistogram = field(default_factory=LatencyHistogram)
    tpot: LatencyHistogram = field(default_factory=LatencyHistogram)
    requests: int = 0
    completed: int = 0
    failed: int = 0
    broken: int = 0  # streams cut by a region failure
    retried: int = 0
    good: int = 0  # completed within the TTFT and TPOT targets
    refused_late: int = 0  # refused at once: the first token could not come in time
    refused_full: int = 0  # refused at once: the fleet's sequence slots were full
    prompt_tokens: int = 0
    cached_tokens: int = 0
    gpu_ms: float = 0.0  # engine-busy time (any sequence prefilling or decoding)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU time over the run (wall_s less waiting for a core)

    @property
    def goodput(self) -> float:
        return self.good / self.duration_s

    @property
    def refused(self) -> int:
        return self.refused_late + self.refused_full

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def gpu_s(self) -> float:
        return self.gpu_ms / 1000.0

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "broken": self.broken,
            "retried": self.retried,
            "refused_deadline": self.refused_late,
            "refused_capacity": self.refused_full,
            "ttft_p50_ms": self.ttft.quantile(0.5),
            "ttft_p99_ms": self.ttft.quantile(0.99),
            "tpot_p99_ms": self.tpot.quantile(0.99),
            "goodput_rps": self.goodput,
            "prefix_hit_rate": self.hit_rate,
            "gpu_s": self.gpu_s,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
        }
