"""Worker metrics: Prometheus series on a per-app registry, and a JSON view.

The JSON view (``GET /v2/stats``) is what the region agent scrapes: queue depth,
in-flight requests, throughput and latency percentiles per model.

Generative models add time to first token, time per output token and end-to-end
latency (histograms, observed by :mod:`worker.generative`) and, read from each
engine's :class:`~worker.generation.types.EngineStats` at scrape time (by
:class:`GenerationCollector`), running and waiting sequences, KV blocks, prefix
cache hits, prefill and decode tokens and preemptions.

The batcher records a whole batch at a time: histograms take an array of
observations (:class:`BatchHistogram`) and :meth:`ModelStats.completed` a batch's
latencies, so the cost per request stays a few array elements.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from worker.generation.types import EngineStats

__all__ = [
    "BatchHistogram",
    "GenerationCollector",
    "GenerationTally",
    "ModelStats",
    "WorkerMetrics",
]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2, 2.5)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)


class HistogramSeries:
    """One label set of a :class:`BatchHistogram`: counts per bucket and the sum."""

    __slots__ = ("_bounds", "counts", "total")

    def __init__(self, bounds: np.ndarray) -> None:
        self._bounds = bounds
        self.counts = np.zeros(len(bounds), dtype=np.int64)  # per bucket, not cumulative
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[int(np.searchsorted(self._bounds, value))] += 1
        self.total += value

    def observe_many(self, values: np.ndarray) -> None:
        """Record every element of ``values`` (one batch's observations)."""
        if values.size:
            index = np.searchsorted(self._bounds, values)  # first bound >= value: "le"
            self.counts += np.bincount(index, minlength=len(self._bounds))
            self.total += float(values.sum())


class BatchHistogram:
    """A Prometheus histogram with one ``model`` label, fed arrays of observations.

    Exposed like ``prometheus_client.Histogram`` (``_bucket`` with ``le``,
    ``_count``, ``_sum``); a batch of observations costs one ``searchsorted``
    rather than a locked update per value."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = np.array([*buckets, math.inf], dtype=np.float64)
        self._les = [floatToGoString(b) for b in self._bounds]
        self._series: dict[str, HistogramSeries] = {}
        registry.register(self)

    def labels(self, model: str) -> HistogramSeries:
        series = self._series.get(model)
        if series is None:
            series = self._series[model] = HistogramSeries(self._bounds)
        return series

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=["model"])
        for model, series in list(self._series.items()):
            cumulative = np.cumsum(series.counts).tolist()
            family.add_metric(
                [model], list(zip(self._les, map(float, cumulative), strict=True)), series.total
            )
        yield family


class ModelStats:
    """Counters and a window of recent latencies for one model."""

    def __init__(self, window: int = 4096, rate_window_s: float = 10.0) -> None:
        self.queue_depth = 0
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.rejected = 0
        self.dropped = 0
        self.deadline_dropped = 0  # deadline passed while queued: never run
        self.batches = 0
        self.rows = 0
        self.capacity_rps = 0.0  # rows/s the engine sustains, from timed runs (EWMA)
        self.last_completed = 0.0  # time.monotonic() of the last answer; 0: none yet
        # rows per engine run -> [runs, seconds in all] (the protocol's batch statistics)
        self.batch_runs: dict[int, list[float]] = {}
        self._latencies: deque[float] = deque(maxlen=window)
        self._completions: deque[tuple[float, int]] = deque()  # (when, how many)
        self._completed_in_window = 0
        self._rate_window_s = rate_window_s

    def completed(self, latencies_s: np.ndarray, now: float) -> None:
        """Requests answered at ``now`` after ``latencies_s`` (one batch's worth)."""
        count = len(latencies_s)
        if not count:
            return
        self.requests += count
        self.last_completed = now
        self._latencies.extend(latencies_s.tolist())
        self._completions.append((now, count))
        self._completed_in_window += count
        self._trim(now)

    def observe_compute(self, rows: int, seconds: float, weight: float = 0.2) -> None:
        """An engine run of ``rows`` took ``seconds``: update the capacity estimate."""
        if seconds <= 0 or rows <= 0:
            return
        runs = self.batch_runs.get(rows)
        if runs is None:
            self.batch_runs[rows] = [1, seconds]
        else:
            runs[0] += 1
            runs[1] += seconds
        rate = rows / seconds
        self.capacity_rps = (
            rate if self.capacity_rps == 0 else ((1 - weight) * self.capacity_rps + weight * rate)
        )

    def _trim(self, now: float) -> None:
        horizon = now - self._rate_window_s
        while self._completions and self._completions[0][0] < horizon:
            self._completed_in_window -= self._completions.popleft()[1]

    def snapshot(self, now: float) -> dict[str, float | int]:
        self._trim(now)
        lat = np.fromiter(self._latencies, dtype=np.float64)
        p50, p90, p99 = (np.percentile(lat, [50, 90, 99]) * 1000) if lat.size else (0.0, 0.0, 0.0)
        return {
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "deadline_dropped": self.deadline_dropped,
            "batches": self.batches,
            "rows": self.rows,
            "mean_batch_rows": (self.rows / self.batches) if self.batches else 0.0,
            "throughput_rps": self._completed_in_window / self._rate_window_s,
            "capacity_rps": round(self.capacity_rps, 2),
            "latency_p50_ms": float(p50),
            "latency_p90_ms": float(p90),
            "latency_p99_ms": float(p99),
        }


@dataclass
class GenerationTally:
    """Finished sequences of one generative model (the protocol's statistics)."""

    ok: int = 0
    ok_s: float = 0.0
    failed: int = 0
    failed_s: float = 0.0
    last_completed: float = 0.0  # time.monotonic(); 0: none yet

    def finished(self, seconds: float, *, ok: bool, now: float) -> None:
        if ok:
            self.ok += 1
            self.ok_s += seconds
        else:
            self.failed += 1
            self.failed_s += seconds
        self.last_completed = now


StatsSource = Callable[[], EngineStats]


_ENGINE_GAUGES = (
    ("running", "meridian_worker_generation_running", "Sequences being generated"),
    ("waiting", "meridian_worker_generation_waiting", "Sequences waiting to start"),
    ("kv_blocks_used", "meridian_worker_kv_blocks_used", "KV cache blocks in use"),
    ("kv_blocks_total", "meridian_worker_kv_blocks_total", "KV cache blocks in all"),
)
_ENGINE_COUNTERS = (
    ("prefill_tokens", "meridian_worker_prefill_tokens", "Prompt tokens computed"),
    ("decode_tokens", "meridian_worker_decode_tokens", "Tokens generated"),
    ("preemptions", "meridian_worker_preemptions", "Sequences preempted for KV space"),
    (
        "prefix_queries",
        "meridian_worker_prefix_cache_queries",
        "Prompt tokens looked up in the prefix cache",
    ),
    ("prefix_hits", "meridian_worker_prefix_cache_hits", "Prompt tokens found in the prefix cache"),
)


class GenerationCollector:
    """Engine figures per generative model, read when Prometheus scrapes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.sources: dict[str, StatsSource] = {}
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        stats = [(label, source()) for label, source in list(self.sources.items())]
        for attr, name, doc in _ENGINE_GAUGES:
            gauge = GaugeMetricFamily(name, doc, labels=["model"])
            for label, st in stats:
                gauge.add_metric([label], float(getattr(st, attr)))
            yield gauge
        for attr, name, doc in _ENGINE_COUNTERS:
            counter = CounterMetricFamily(name, doc, labels=["model"])
            for label, st in stats:
                counter.add_metric([label], float(getattr(st, attr)))
            yield counter
        rate = GaugeMetricFamily(
            "meridian_worker_prefix_cache_hit_rate",
            "Share of prompt tokens found in the prefix cache",
            labels=["model"],
        )
        for label, st in stats:
            rate.add_metric([label], st.prefix_hits / st.prefix_queries if st.prefix_queries else 0)
        yield rate

    def describe(self) -> Iterator[Metric]:
        return iter(())


_GENERATIVE_SUMS = (
    "running",
    "waiting",
    "kv_blocks_used",
    "kv_blocks_free",
    "prefill_tokens_per_s",
    "decode_tokens_per_s",
)


@dataclass
class TokenRates:
    """Prefill and decode tokens per second from an engine's counters, between reads at
    least ``min_interval_s`` apart (closer reads keep the last rates)."""

    min_interval_s: float = 0.5
    at: float = -1.0
    prefill: int = 0
    decode: int = 0
    prefill_per_s: float = 0.0
    decode_per_s: float = 0.0

    def observe(self, now: float, prefill: int, decode: int) -> None:
        if self.at < 0:
            self.at, self.prefill, self.decode = now, prefill, decode
            return
        dt = now - self.at
        if dt < self.min_interval_s:
            return
        self.prefill_per_s = round(max(0, prefill - self.prefill) / dt, 1)
        self.decode_per_s = round(max(0, decode - self.decode) / dt, 1)
        self.at, self.prefill, self.decode = now, prefill, decode


class WorkerMetrics:
    """All metrics of one worker app; nothing is registered globally."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "meridian_worker_requests",
            "Inference requests by outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.deadline_dropped = Counter(
            "meridian_worker_deadline_dropped",
            "Requests whose deadline passed while queued, answered 504 without running",
            ["model"],
            registry=r,
        )
        self.batch_size = BatchHistogram(
            "meridian_worker_batch_rows", "Rows per engine run", _BATCH_BUCKETS, r
        )
        self.queue_time = BatchHistogram(
            "meridian_worker_queue_seconds", "Time from enqueue to engine start", _TIME_BUCKETS, r
        )
        self.compute_time = BatchHistogram(
            "meridian_worker_compute_seconds", "Engine run time per batch", _TIME_BUCKETS, r
        )
        self.request_time = BatchHistogram(
            "meridian_worker_request_seconds", "Time from enqueue to result", _TIME_BUCKETS, r
        )
        self.queue_depth = Gauge(
            "meridian_worker_queue_depth",
            "Requests waiting in the batch queue",
            ["model"],
            registry=r,
        )
        self.in_flight = Gauge(
            "meridian_worker_in_flight", "Requests queued or running", ["model"], registry=r
        )
        self.ttft = BatchHistogram(
            "meridian_worker_time_to_first_token_seconds",
            "Time from a generation request to its first token",
            _TTFT_BUCKETS,
            r,
        )
        self.tpot = BatchHistogram(
            "meridian_worker_time_per_output_token_seconds",
            "Time per generated token after the first",
            _TPOT_BUCKETS,
            r,
        )
        self.e2e = BatchHistogram(
            "meridian_worker_generation_seconds",
            "Time from a generation request to its last token",
            _E2E_BUCKETS,
            r,
        )
        self.generations = Counter(
            "meridian_worker_generations",
            "Finished generation requests by finish reason",
            ["model", "finish_reason"],
            registry=r,
        )
        self.engines = GenerationCollector(r)
        self._models: dict[str, ModelStats] = {}
        self._token_rates: dict[str, TokenRates] = {}

    def model(self, name: str) -> ModelStats:
        stats = self._models.get(name)
        if stats is None:
            stats = self._models[name] = ModelStats()
        return stats

    def snapshot(self) -> dict[str, object]:
        now = time.monotonic()
        models = {name: s.snapshot(now) for name, s in self._models.items()}
        for label, source in list(self.engines.sources.items()):
            st = source()
            models[label] = {
                "queue_depth": st.waiting,
                "in_flight": st.running + st.waiting,
                "running": st.running,
                "waiting": st.waiting,
                "kv_blocks_used": st.kv_blocks_used,
                "kv_blocks_total": st.kv_blocks_total,
                "prefix_hit_rate": st.prefix_hits / st.prefix_queries if st.prefix_queries else 0,
                "throughput_rps": 0.0,
                "capacity_rps": 0.0,
            }
            rates = self._token_rates.setdefault(label, TokenRates())
            rates.observe(now, st.prefill_tokens, st.decode_tokens)
            models[label].update(
                kv_blocks_free=st.kv_blocks_total - st.kv_blocks_used,
                kv_block_size=st.block_size,
                prefill_tokens_per_s=rates.prefill_per_s,
                decode_tokens_per_s=rates.decode_per_s,
            )
        out: dict[str, object] = {
            "queue_depth": sum(int(m["queue_depth"]) for m in models.values()),
            "in_flight": sum(int(m["in_flight"]) for m in models.values()),
            "throughput_rps": sum(float(m["throughput_rps"]) for m in models.values()),
            "capacity_rps": sum(float(m["capacity_rps"]) for m in models.values()),
            "models": models,
        }
        engines = [models[label] for label in self._token_rates if label in models]
        if engines:  # generative figures, summed over the worker's generative models
            for key in _GENERATIVE_SUMS:
                out[key] = sum(m.get(key, 0) for m in engines)
            out["kv_block_size"] = max(int(m.get("kv_block_size", 0)) for m in engines)
            hit = [float(m["prefix_hit_rate"]) for m in engines]
            out["prefix_hit_rate"] = sum(hit) / len(hit)
        return out
