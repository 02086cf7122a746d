"""What the router saw, folded into ``RouterStats`` in bulk.

``RouterStats`` keeps numpy arrays so that policies read the whole fleet in a few
vector operations; updating them per request costs more than the rest of the
request. The router notes each dispatch and result in plain counters and folds
them in at most every ``every_s`` (the policy reuses its queueing charge for as
long anyway); errors are folded in at once, so circuits open without delay.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from router.policies import RouterStats

__all__ = ["Observations"]


class Observations:
    def __init__(self, stats: RouterStats, every_s: float = 0.005) -> None:
        self.stats = stats
        self.every_s = every_s
        self._last = 0.0
        self._sent: dict[str, int] = defaultdict(int)
        self._ok: dict[str, int] = defaultdict(int)
        self._service_ms: dict[str, float] = defaultdict(float)
        self._wait_ms: dict[str, float] = defaultdict(float)
        self._gone: dict[str, int] = defaultdict(int)

    def dispatch(self, region: str, now: float) -> None:
        self._sent[region] += 1
        if now - self._last >= self.every_s:
            self.flush(now)

    def success(self, region: str, service_ms: float, wait_ms: float, now: float) -> None:
        """An answer in ``service_ms``; ``wait_ms`` of it is unexplained: the attempt's time
        less one network round trip less the latency the worker reports for itself."""
        self._ok[region] += 1
        self._service_ms[region] += service_ms
        self._wait_ms[region] += wait_ms
        if now - self._last >= self.every_s:
            self.flush(now)

    def abandoned(self, region: str) -> None:
        """A request sent there was given up before its answer (a hedge answered first,
        or the client left): no longer outstanding, and no result to count."""
        if self._sent.get(region, 0) > 0:
            self._sent[region] -= 1  # not folded in yet
        else:
            self._gone[region] += 1

    def error(self, region: str, now: float) -> None:
        self.flush(now)
        self.stats.on_error(region, now)

    def flush(self, now: float) -> None:
        self._last = now
        if self._sent:
            names = tuple(self._sent)
            counts = np.fromiter(self._sent.values(), dtype=np.float64, count=len(names))
            self.stats.record_dispatches(self.stats.indices(names), counts, now)
            self._sent.clear()
        if self._gone:
            idx = self.stats.indices(tuple(self._gone))
            gone = np.fromiter(self._gone.values(), dtype=np.float64, count=len(idx))
            out = self.stats.outstanding
            out[idx] = np.maximum(out[idx] - gone, 0.0)
            self._gone.clear()
        if self._ok:
            names = tuple(self._ok)
            ok = np.fromiter(self._ok.values(), dtype=np.float64, count=len(names))
            service = np.fromiter(
                (self._service_ms[n] for n in names), dtype=np.float64, count=len(names)
            )
            wait = np.fromiter(
                (self._wait_ms[n] for n in names), dtype=np.float64, count=len(names)
            )
            failed = np.zeros(len(names))
            self.stats.record_results(self.stats.indices(names), ok, failed, wait, service, now)
            self._ok.clear()
            self._service_ms.clear()
            self._wait_ms.clear()
