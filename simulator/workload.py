"""Request arrivals: real trace shape and sizes, clients in real cities.

Arrivals are a Poisson process whose rate is the target rate times the trace's
requests per 10 s (normalised to mean 1, replayed in time-lapse: by default 10 s
of trace per simulated second, from the trace's second minute); each request's
(input, output) token counts are drawn from the trace's own pairs, and its client city is drawn
in proportion to population, times any burst factor or local-time (follow the
sun) factor in force. Generated slice by slice, so memory stays bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from router.latency import great_circle_km_array
from simulator.data import Places, Trace

__all__ = ["Burst", "CostModel", "Slice", "Workload"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class CostModel:
    """GPU time of one request: prefill per input token + decode per output token.

    Per GPU at its batched throughput: 0.02 ms per prompt token (50k prefill tokens/s)
    and 0.25 ms per generated token (4k decode tokens/s), plus 5 ms fixed overhead.
    """

    overhead_ms: float = 5.0
    prefill_ms_per_token: float = 0.02
    decode_ms_per_token: float = 0.25

    def service_ms(self, input_tokens: FloatArray, output_tokens: FloatArray) -> FloatArray:
        out: FloatArray = (
            self.overhead_ms
            + self.prefill_ms_per_token * input_tokens
            + self.decode_ms_per_token * output_tokens
        )
        return out


@dataclass(frozen=True, slots=True)
class Burst:
    """Clients within ``radius_km`` of (lat, lon) send ``factor`` x traffic in [start, end)."""

    lat: float
    lon: float
    radius_km: float
    factor: float
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class Slice:
    t_ms: FloatArray  # arrival times, sorted
    client: IntArray  # index into the places
    service_ms: FloatArray


class Workload:
    def __init__(
        self,
        places: Places,
        trace: Trace,
        rate_rps: float,
        *,
        cost: CostModel | None = None,
        bursts: tuple[Burst, ...] = (),
        follow_the_sun_day_s: float = 0.0,
        time_lapse: float = 10.0,
        trace_offset_s: float = 60.0,
        seed: int = 1,
    ) -> None:
        self.places = places
        self.rate_rps = rate_rps
        self.profile = trace.rate_profile(bin_s=10.0)
        self.time_lapse = time_lapse  # trace seconds replayed per simulated second
        self.trace_offset_s = trace_offset_s  # skip the trace's first minute (collection ramp-up)
        self.cost = cost or CostModel()
        self.trace_service = self.cost.service_ms(trace.input_tokens, trace.output_tokens)
        self.mean_service_ms = float(self.trace_service.mean())
        self.bursts = bursts
        self.day_s = follow_the_sun_day_s
        self.rng = np.random.default_rng(seed)
        self.base_weight = places.population / places.population.sum()
        self._in_burst = [
            great_circle_km_array(places.lat, places.lon, b.lat, b.lon) <= b.radius_km
            for b in bursts
        ]
        self._key: tuple[object, ...] = ()
        self._cum = np.cumsum(self.base_weight)
        self._scale = 1.0

    def local_factor(self, t_s: float) -> FloatArray:
        """Traffic by local time of day: 1.0 at 15:00, 0.2 at 03:00; the day runs in day_s."""
        hour = (24.0 * t_s / self.day_s + self.places.lon / 15.0) % 24.0
        out: FloatArray = 0.6 + 0.4 * np.cos(2 * math.pi * (hour - 15.0) / 24.0)
        return out

    def weights(self, t_s: float) -> tuple[FloatArray, float]:
        """Per-city weights (sum 1) and the total rate multiplier at ``t_s``."""
        w = self.base_weight
        if self.day_s > 0:
            w = w * self.local_factor(t_s)
            w = w / w.sum()  # the sun moves the traffic, the world total stays the same
        active = [i for i, b in enumerate(self.bursts) if b.start_s <= t_s < b.end_s]
        scale = 1.0
        if active:
            w = w.copy()
            for i in active:
                w = np.where(self._in_burst[i], w * self.bursts[i].factor, w)
            scale = float(w.sum())
            w = w / scale
        return w, scale

    def rate_at(self, t_s: float) -> float:
        """Target rate x the trace's load shape (mean 1) at ``t_s`` of simulated time."""
        trace_s = self.trace_offset_s + t_s * self.time_lapse
        return self.rate_rps * float(self.profile[int(trace_s // 10.0) % len(self.profile)])

    def slice(self, t0_ms: float, dt_ms: float) -> Slice:
        t_s = t0_ms / 1000.0
        key = (
            int(t_s) if self.day_s > 0 else 0,
            tuple(b.start_s <= t_s < b.end_s for b in self.bursts),
        )
        if key != self._key:
            w, self._scale = self.weights(t_s)
            self._cum = np.cumsum(w)
            self._key = key
        n = int(self.rng.poisson(self.rate_at(t_s) * self._scale * dt_ms / 1000.0))
        t = np.sort(self.rng.uniform(t0_ms, t0_ms + dt_ms, n))
        client = np.minimum(
            np.searchsorted(self._cum, self.rng.uniform(0, self._cum[-1], n)), len(self._cum) - 1
        ).astype(np.int64)
        svc = self.trace_service[self.rng.integers(0, len(self.trace_service), n)]
        return Slice(t, client, svc)
