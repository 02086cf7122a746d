"""Probes of the workers the router has found slow or gone (``router.outliers``).

Started from the request path (a request brings the model, target and body a shadow
copy needs), at most once per ``OutlierConfig.probe_interval_s`` per worker and
``max_in_flight`` at once; each is a task kept here, cancelled and awaited by
:meth:`OutlierProbes.close`.

- an ejected worker gets a TCP connect; when it succeeds the worker is readmitted;
- a slow worker serving the request's model gets a shadow copy of the request
  (``x-meridian-shadow: 1``; its answer is discarded); its latency updates the
  worker's record, and the region's wait EWMA while the region as a whole is slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, MutableMapping

from meridian.snapshot import RoutingSnapshot, WorkerView
from router.loop_lag import LoopLag
from router.outliers import WorkerOutliers
from router.policies import RouterStats
from router.upstream import UpstreamConnectError, UpstreamError, UpstreamPool

__all__ = ["OutlierProbes"]

log = logging.getLogger(__name__)


class OutlierProbes:
    def __init__(
        self,
        pool: UpstreamPool,
        outliers: WorkerOutliers,
        stats: RouterStats,
        counters: MutableMapping[str, int],
        endpoint: Callable[[str], tuple[str, int]],
        lag: LoopLag,
        *,
        timeout_s: float,
        max_in_flight: int = 16,
    ) -> None:
        self.pool = pool
        self.outliers = outliers
        self.stats = stats
        self.counters = counters
        self._endpoint = endpoint
        self.lag = lag
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._tasks: set[asyncio.Task[None]] = set()
        # worker id -> (region, worker) of ``_index_snap``
        self._worker_index: dict[str, tuple[str, WorkerView]] = {}
        self._index_snap: RoutingSnapshot | None = None

    def _worker_of(self, snap: RoutingSnapshot, worker_id: str) -> tuple[str, WorkerView] | None:
        if snap is not self._index_snap:
            self._worker_index = {w.worker_id: (r.name, w) for r in snap.regions for w in r.workers}
            self._index_snap = snap
            self.outliers.forget_except(set(self._worker_index))
        return self._worker_index.get(worker_id)

    def start_due(
        self,
        snap: RoutingSnapshot,
        model: str,
        target: str,
        method: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        now: float,
    ) -> None:
        """Probe the slow and ejected workers that are due: a connect to an ejected one, a
        shadow copy of this request (its answer discarded) to a slow one serving ``model``."""
        for worker_id in self.outliers.probes_due(now):
            found = self._worker_of(snap, worker_id)
            if found is None or len(self._tasks) >= self.max_in_flight:
                continue
            region, worker = found
            if self.outliers.is_ejected(worker_id):
                coro = self._connect(worker)
            elif any(m == model or m.startswith(model + ":") for m in worker.models):
                shadow = [*headers, (b"x-meridian-shadow", b"1")]
                coro = self._shadow(region, worker, method, target, shadow, body)
            else:
                continue
            task = asyncio.get_running_loop().create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(self, worker: WorkerView) -> None:
        host, port = self._endpoint(worker.endpoint)
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        self.outliers.readmit(worker.worker_id)
        self.counters["worker_readmissions"] += 1
        log.info("readmitted worker %s: it accepts connections again", worker.worker_id)

    async def _shadow(
        self,
        region: str,
        worker: WorkerView,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        host, port = self._endpoint(worker.endpoint)
        timeout = self.timeout_s
        sent = time.monotonic()
        stall_from = self.lag.stalled_ms()
        try:
            upstream = await self.pool.request(host, port, method, target, headers, body, timeout)
        except UpstreamConnectError:
            if self.outliers.eject(worker.worker_id, worker.endpoint):
                self.counters["worker_ejections"] += 1
            return
        except TimeoutError:
            upstream = None
        except UpstreamError:
            return
        done = time.monotonic()
        self.counters["shadow_probes"] += 1
        if upstream is not None and upstream.status >= 500:
            return
        stalled_ms = self.lag.stalled_ms() - stall_from  # the router's own, not the worker's
        took_ms = (done - sent) * 1000.0 - stalled_ms
        excess_ms = took_ms - self.pool.network_ms(host, port) - worker.latency_p50_ms
        self.outliers.observe(worker.worker_id, excess_ms, done)
        if self.stats.region(region, done).wait_ms > self.outliers.config.slow_ms:
            self.stats.observe_wait(region, excess_ms, done)  # keep a slow region's figure fresh

    async def close(self) -> None:
        """Cancel the probes in flight and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
