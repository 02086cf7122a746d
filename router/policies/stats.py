"""The router's own view of each region: what it sent, what came back, and how fast.

Kept in flat numpy arrays (one slot per region name, in order of first sight) so a
policy reads the whole fleet in a few vector operations. The router calls the
scalar methods per request; the fleet simulator calls the bulk ones per time
slice. Both go through the same arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["RegionStats", "RouterStats", "StatsConfig"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class StatsConfig:
    ewma_alpha: float = 0.2  # weight of one new observation in the latency EWMAs
    rate_tau_s: float = 1.0  # time constant of the dispatch-rate estimate
    wait_decay_s: float = 2.0  # an unrefreshed wait estimate fades with this time constant
    circuit_errors: int = 5  # consecutive errors that open a region's circuit
    circuit_open_s: float = 5.0  # how long an open circuit keeps the region out
    scale_alpha: float = 0.3  # weight of one snapshot in the estimate of this router's share
    scale_min_own: float = 4.0  # own requests in regions needed before a share is estimated
    scale_max: float = 256.0  # at most this many routers' worth of traffic per own request


@dataclass(frozen=True, slots=True)
class RegionStats:
    """One region's figures, as plain data (for status pages and tests)."""

    outstanding: int
    rate_rps: float
    wait_ms: float
    service_ms: float
    errors: int
    circuit_open: bool


class RouterStats:
    """Per-region outstanding requests, dispatch rate, EWMA of wait and service time, circuit."""

    def __init__(self, config: StatsConfig | None = None) -> None:
        self.config = config or StatsConfig()
        self.version = 0  # grows on every change; policies key their caches on it
        self.error_version = 0  # grows on every recorded error (circuits may have changed)
        self._index: dict[str, int] = {}
        self._index_cache: dict[tuple[str, ...], IntArray] = {}
        self._slots_cache: dict[tuple[str, ...], IntArray | slice] = {}
        self.outstanding = np.zeros(0)
        self.rate_rps = np.zeros(0)
        self.wait_ms = np.zeros(0)
        self.service_ms = np.zeros(0)  # 0 = nothing observed yet
        self.rtt_ms = np.zeros(0)  # EWMA of the RTT of requests sent (their time on the wire)
        self.observed_at = np.zeros(0)
        self.consecutive_errors = np.zeros(0)
        self.errors = np.zeros(0)
        self.circuit_open_until = np.zeros(0)
        # what the snapshots showed: own outstanding when the current one arrived, and the
        # concurrency each region was seen to sustain (0: nothing learned, trust the report)
        self.snap_outstanding = np.zeros(0)
        self.learned_servers = np.zeros(0)
        self.learned_version = 0
        # fleet-wide load per own request in the regions (about the number of routers)
        self.replica_scale = 1.0
        self.scale_known = False
        self.snapshot_token: object = None
        self._rate_at = 0.0

    # --- layout -----------------------------------------------------------------------------

    def indices(self, names: Sequence[str]) -> IntArray:
        """Slots of ``names`` (added on first sight), cached per name tuple."""
        key = tuple(names)
        cached = self._index_cache.get(key)
        if cached is not None:
            return cached
        new = [n for n in key if n not in self._index]
        if new:
            for n in new:
                self._index[n] = len(self._index)
            self._grow(len(self._index))
        idx = np.array([self._index[n] for n in key], dtype=np.int64)
        self._index_cache[key] = idx
        return idx

    def slots(self, names: Sequence[str]) -> IntArray | slice:
        """Like ``indices``, for reading: a slice (numpy views, no gathers) when the names
        occupy consecutive slots in order, as they do for a router that always sees the
        fleet in snapshot order."""
        key = tuple(names)
        cached = self._slots_cache.get(key)
        if cached is not None:
            return cached
        idx = self.indices(key)
        out: IntArray | slice = idx
        if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
            out = slice(int(idx[0]), int(idx[0]) + len(idx))
        self._slots_cache[key] = out
        return out

    def _grow(self, size: int) -> None:
        for attr in (
            "outstanding",
            "rate_rps",
            "wait_ms",
            "service_ms",
            "rtt_ms",
            "observed_at",
            "consecutive_errors",
            "errors",
            "circuit_open_until",
            "snap_outstanding",
            "learned_servers",
        ):
            old = getattr(self, attr)
            grown = np.zeros(size)
            grown[: len(old)] = old
            setattr(self, attr, grown)

    # --- bulk updates (arrays aligned with ``indices(names)``) --------------------------------

    def record_dispatches(
        self, idx: IntArray, counts: FloatArray, now: float, rtt_sum_ms: FloatArray | None = None
    ) -> None:
        """``counts[i]`` requests were just sent to region ``idx[i]`` (RTTs summing to
        ``rtt_sum_ms[i]``)."""
        self._decay_rate(now)
        self.rate_rps[idx] += counts / self.config.rate_tau_s
        self.outstanding[idx] += counts
        if rtt_sum_ms is not None:
            sent = counts > 0
            j = idx[sent]
            keep = (1.0 - self.config.ewma_alpha) ** counts[sent]
            self.rtt_ms[j] = keep * self.rtt_ms[j] + (1 - keep) * (rtt_sum_ms[sent] / counts[sent])
        self.version += 1

    def record_results(
        self,
        idx: IntArray,
        ok: FloatArray,
        failed: FloatArray,
        wait_sum_ms: FloatArray,
        service_sum_ms: FloatArray,
        now: float,
    ) -> None:
        """Responses: ``ok`` successes (summed wait and service), ``failed`` errors."""
        cfg = self.config
        self.outstanding[idx] = np.maximum(self.outstanding[idx] - ok - failed, 0.0)
        seen = ok > 0
        if seen.any():
            j = idx[seen]
            n = ok[seen]
            keep = (1.0 - cfg.ewma_alpha) ** n
            self.wait_ms[j] = keep * self.wait_ms[j] + (1 - keep) * (wait_sum_ms[seen] / n)
            svc = service_sum_ms[seen] / n
            prior = self.service_ms[j]
            self.service_ms[j] = np.where(prior > 0, keep * prior + (1 - keep) * svc, svc)
            self.observed_at[j] = now
        bad = failed > 0
        if bad.any() or seen.any():
            cons = self.consecutive_errors[idx]
            cons = np.where(seen, failed, cons + failed)
            trip = cons >= cfg.circuit_errors
            self.circuit_open_until[idx] = np.where(
                trip, now + cfg.circuit_open_s, self.circuit_open_until[idx]
            )
            self.consecutive_errors[idx] = np.where(trip, 0.0, cons)
            self.errors[idx] += failed
            if bad.any():
                self.error_version += 1
        self.version += 1

    def _decay_rate(self, now: float) -> None:
        dt = now - self._rate_at
        if dt > 0:
            self.rate_rps *= math.exp(-dt / self.config.rate_tau_s)
            self._rate_at = now

    def observe_snapshot(
        self,
        token: object,
        idx: IntArray | slice,
        reported_load: FloatArray,
        reported_servers: FloatArray,
        in_flight: FloatArray,
        queue_depth: FloatArray,
        now: float,
        idle_wait_ms: float = 5.0,
        routers: int = 0,
    ) -> bool:
        """A snapshot arrived (``token`` names it; a second call with it does nothing).

        Remembers this router's outstanding requests at that moment (what it sends from
        now on is the part of the load the snapshot cannot show); estimates the fleet's
        load per request of its own in the regions (``replica_scale``: about the number
        of routers sharing the traffic); and learns each region's real concurrency from
        what the region does rather than what it reports: a region with a queue runs
        exactly ``in_flight`` requests at once, and one running more than it reports
        while this router's own requests there find no queue (their recent wait under
        ``idle_wait_ms``) has at least that many servers. Until this router has enough
        requests of its own out to measure its share, it assumes an equal one among the
        ``routers`` the snapshot counts (0: unknown, assume none other). Returns True when
        the snapshot was new.
        """
        if token is self.snapshot_token:
            return False
        self.snapshot_token = token
        cfg = self.config
        self.snap_outstanding[idx] = self.outstanding[idx]
        own = float(self.in_region(idx, now).sum())
        if own >= cfg.scale_min_own:
            ratio = min(max(float(reported_load.sum()) / own, 1.0), cfg.scale_max)
            a = cfg.scale_alpha if self.scale_known else 1.0  # the first estimate stands alone
            self.replica_scale += a * (ratio - self.replica_scale)
            self.scale_known = True
        elif not self.scale_known and routers > 0:
            self.replica_scale = min(float(routers), cfg.scale_max)
        learned = self.learned_servers[idx]
        busy = in_flight > 0
        queued = busy & (queue_depth > 0)
        age = now - self.observed_at[idx]
        idle = (self.observed_at[idx] > 0) & (age < cfg.wait_decay_s)
        idle &= self.wait_ms[idx] < idle_wait_ms
        more = busy & ~queued & idle & (in_flight > np.maximum(learned, reported_servers))
        new = np.where(queued, in_flight, learned)
        new = np.where(more, in_flight, new)
        if not np.array_equal(new, learned):
            self.learned_servers[idx] = new
            self.learned_version += 1
        self.version += 1
        return True

    def effective_servers(self, idx: IntArray | slice, reported: FloatArray) -> FloatArray:
        """Concurrency per region: the learned one where a region showed it, else the report."""
        learned = self.learned_servers[idx]
        out: FloatArray = np.where(learned > 0, learned, reported)
        return out

    def since_snapshot(self, idx: IntArray | slice) -> FloatArray:
        """Own outstanding requests gained (or lost) since the current snapshot arrived."""
        out: FloatArray = self.outstanding[idx] - self.snap_outstanding[idx]
        return out

    # --- per-request updates (the router) -----------------------------------------------------

    def _slot(self, region: str) -> int:
        i = self._index.get(region)
        if i is None:
            i = int(self.indices((region,))[0])
        return i

    def on_dispatch(self, region: str, now: float, rtt_ms: float = 0.0) -> None:
        """One request sent (scalar twin of ``record_dispatches``)."""
        i = self._slot(region)
        self._decay_rate(now)
        self.rate_rps[i] += 1.0 / self.config.rate_tau_s
        self.outstanding[i] += 1.0
        self.rtt_ms[i] += self.config.ewma_alpha * (rtt_ms - self.rtt_ms[i])
        self.version += 1

    def on_success(self, region: str, wait_ms: float, service_ms: float, now: float) -> None:
        """A response: ``wait_ms`` = observed time minus RTT minus the worker's compute time
        (signed: an EWMA of it stays near 0 while reports are honest)."""
        i = self._slot(region)
        a = self.config.ewma_alpha
        self.outstanding[i] = max(self.outstanding[i] - 1.0, 0.0)
        self.wait_ms[i] += a * (wait_ms - self.wait_ms[i])
        prior = self.service_ms[i]
        self.service_ms[i] = prior + a * (service_ms - prior) if prior > 0 else service_ms
        self.observed_at[i] = now
        self.consecutive_errors[i] = 0.0
        self.version += 1

    def observe_wait(self, region: str, wait_ms: float, now: float) -> None:
        """A wait seen outside the request flow (a shadow probe of a slow region): moves
        the wait EWMA only, not the outstanding count or the rate."""
        i = self._slot(region)
        self.wait_ms[i] += self.config.ewma_alpha * (wait_ms - self.wait_ms[i])
        self.observed_at[i] = now
        self.version += 1

    def open_circuit(self, region: str, now: float) -> None:
        """Eject the region at once (every worker of it refused a connection)."""
        i = self._slot(region)
        self.circuit_open_until[i] = max(
            self.circuit_open_until[i], now + self.config.circuit_open_s
        )
        self.consecutive_errors[i] = 0.0
        self.error_version += 1
        self.version += 1

    def on_error(self, region: str, now: float) -> None:
        """A connect error, 5xx or timeout from the region."""
        i = self._slot(region)
        cfg = self.config
        self.outstanding[i] = max(self.outstanding[i] - 1.0, 0.0)
        self.errors[i] += 1.0
        self.consecutive_errors[i] += 1.0
        if self.consecutive_errors[i] >= cfg.circuit_errors:
            self.circuit_open_until[i] = now + cfg.circuit_open_s
            self.consecutive_errors[i] = 0.0
        self.error_version += 1
        self.version += 1

    # --- reading -----------------------------------------------------------------------------

    def rates(self, idx: IntArray | slice, now: float) -> FloatArray:
        """Dispatch rate per region at ``now`` (requests/s)."""
        dt = max(0.0, now - self._rate_at)
        out: FloatArray = self.rate_rps[idx] * math.exp(-dt / self.config.rate_tau_s)
        return out

    def waits(self, idx: IntArray | slice, now: float) -> FloatArray:
        """Observed wait per region (never below 0), fading while no new observation
        arrives."""
        age = np.maximum(now - self.observed_at[idx], 0.0)
        fade = np.exp(-age / self.config.wait_decay_s)
        out: FloatArray = np.maximum(self.wait_ms[idx], 0.0) * fade
        return out

    def in_region(
        self, idx: IntArray | slice, now: float, rates: FloatArray | None = None
    ) -> FloatArray:
        """Outstanding requests less those still on the wire (Little's law: rate x RTT)."""
        if rates is None:
            rates = self.rates(idx, now)
        on_wire = rates * self.rtt_ms[idx] / 1000.0
        out: FloatArray = np.maximum(self.outstanding[idx] - on_wire, 0.0)
        return out

    def circuit_open(self, idx: IntArray | slice, now: float) -> npt.NDArray[np.bool_]:
        out: npt.NDArray[np.bool_] = self.circuit_open_until[idx] > now
        return out

    def region(self, name: str, now: float) -> RegionStats:
        i = self.indices((name,))
        return RegionStats(
            outstanding=int(self.outstanding[i][0]),
            rate_rps=float(self.rates(i, now)[0]),
            wait_ms=float(self.waits(i, now)[0]),
            service_ms=float(self.service_ms[i][0]),
            errors=int(self.errors[i][0]),
            circuit_open=bool(self.circuit_open(i, now)[0]),
        )
