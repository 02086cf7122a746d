"""Workers the router has seen misbehave: too slow for what they report, or not there.

Two kinds of outlier, both judged from the router's own observations, per worker:

- **slow** (a gray failure): the EWMA of a worker's *excess* latency — the time an
  attempt took, less one network round trip, less the latency the worker itself
  reports — is above ``slow_ms``. Slow workers are passed over inside their region
  while they are at most ``max_slow_fraction`` of its workers (beyond that the region
  as a whole is slow, and its cost says so through ``RouterStats`` waits). A slow
  worker is kept under observation with shadow copies of live requests at most every
  ``probe_interval_s`` ("latency-induced probation", as in *The Tail at Scale*), so
  it is readmitted as soon as it is quick again, without an end user waiting on it.
- **gone**: a connection to the worker could not be made (refused, unreachable,
  timed out). It is ejected on the first such failure, as Envoy's outlier detection
  ejects a host on consecutive connect failures, and readmitted only once a TCP
  connect to it succeeds again (probed every ``probe_interval_s``), so requests
  do not rediscover a dead region one by one.

A plain object over a clock passed in (``time.monotonic`` seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from meridian.snapshot import WorkerView

__all__ = ["OutlierConfig", "WorkerOutliers"]


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    slow_ms: float = 100.0  # excess latency (EWMA) beyond which a worker is slow
    ewma_alpha: float = 0.3  # weight of one new observation
    probe_interval_s: float = 0.25  # how often a slow or ejected worker is probed
    max_slow_fraction: float = 0.5  # at most this share of a region's workers is passed over
    forget_s: float = 30.0  # a slow verdict with no new observation for this long is dropped


@dataclass(slots=True)
class _Latency:
    excess_ms: float
    at: float


class WorkerOutliers:
    def __init__(self, config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self._latency: dict[str, _Latency] = {}
        self._slow: set[str] = set()
        self._ejected: dict[str, str] = {}  # worker id -> endpoint to probe
        self._probed_at: dict[str, float] = {}
        self.ejections = 0

    # --- observations ------------------------------------------------------------------------

    def observe(self, worker_id: str, excess_ms: float, now: float) -> None:
        """One answer from the worker: attempt time less network less its reported latency."""
        cfg = self.config
        entry = self._latency.get(worker_id)
        if entry is None:
            entry = self._latency[worker_id] = _Latency(excess_ms, now)
        else:
            entry.excess_ms += cfg.ewma_alpha * (excess_ms - entry.excess_ms)
            entry.at = now
        if entry.excess_ms > cfg.slow_ms:
            self._slow.add(worker_id)
        elif entry.excess_ms < cfg.slow_ms / 2:  # hysteresis: leave well below the line
            self._slow.discard(worker_id)

    def silent(self, worker_id: str, silent_ms: float, now: float) -> None:
        """The worker stayed silent ``silent_ms`` while others answered in its place (it
        lost hedges in a row): slow now, whatever its average said before; quick answers
        to its shadow probes bring it back as they would any slow worker."""
        excess = max(2.0 * self.config.slow_ms, silent_ms)
        entry = self._latency.get(worker_id)
        if entry is None:
            self._latency[worker_id] = _Latency(excess, now)
        else:
            entry.excess_ms = max(entry.excess_ms, excess)
            entry.at = now
        self._slow.add(worker_id)

    def eject(self, worker_id: str, endpoint: str) -> bool:
        """A connection to the worker failed: out until a connect succeeds. True if new."""
        if worker_id in self._ejected:
            return False
        self._ejected[worker_id] = endpoint
        self.ejections += 1
        return True

    def readmit(self, worker_id: str) -> None:
        self._ejected.pop(worker_id, None)

    # --- reading -----------------------------------------------------------------------------

    def excess_ms(self, worker_id: str) -> float:
        entry = self._latency.get(worker_id)
        return entry.excess_ms if entry is not None else 0.0

    def is_slow(self, worker_id: str, now: float) -> bool:
        if worker_id not in self._slow:
            return False
        entry = self._latency[worker_id]
        if now - entry.at > self.config.forget_s:
            self._slow.discard(worker_id)
            return False
        return True

    def is_ejected(self, worker_id: str) -> bool:
        return worker_id in self._ejected

    @property
    def slow(self) -> frozenset[str]:
        return frozenset(self._slow)

    @property
    def ejected(self) -> dict[str, str]:
        return dict(self._ejected)

    @property
    def quiet(self) -> bool:
        """Nothing slow or ejected: every worker may be used as it is."""
        return not self._slow and not self._ejected

    def usable(self, workers: Sequence[WorkerView], now: float) -> Sequence[WorkerView]:
        """``workers`` less the ejected ones, and less the slow ones while they are few."""
        if self.quiet:
            return workers
        live = [w for w in workers if w.worker_id not in self._ejected]
        if not self._slow:
            return live
        fast = [w for w in live if not self.is_slow(w.worker_id, now)]
        if fast and len(live) - len(fast) <= self.config.max_slow_fraction * len(live):
            return fast
        return live

    def probes_due(self, now: float) -> list[str]:
        """Slow or ejected workers not probed for ``probe_interval_s``; marks them probed."""
        if self.quiet:
            return []
        due = []
        for worker_id in (*self._slow, *self._ejected):
            if now - self._probed_at.get(worker_id, -1e18) >= self.config.probe_interval_s:
                self._probed_at[worker_id] = now
                due.append(worker_id)
        return due

    def forget_except(self, worker_ids: set[str]) -> None:
        """Drop what is known of workers no longer in the snapshot."""
        for table in (self._latency, self._ejected, self._probed_at):
            for worker_id in [w for w in table if w not in worker_ids]:
                del table[worker_id]
        self._slow &= worker_ids
