"""Dynamic batching: one batcher per loaded model.

Requests wait in a bounded queue. While the engine is idle, the batcher takes
the oldest live request and every queued request of the same shape signature
(up to ``max_batch_size`` rows), waiting at most ``max_queue_delay`` for the
batch to fill; it concatenates them along dimension 0, runs the engine once in
a worker thread and hands each request its slice of the outputs (views, no
copy). Requests of different shapes are grouped separately, never mixed. A full
queue refuses at once (``Unavailable`` with a retry hint) instead of growing
latency; a request whose caller went away (future cancelled) is skipped.
The fill wait aims at the previous batch's size (never above the maximum), so a
lone client is not delayed waiting for rows that are not coming.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from meridian.errors import MeridianError, Unavailable, UpstreamTimeout
from worker.metrics import ModelStats, WorkerMetrics

__all__ = ["BatchPolicy", "DynamicBatcher"]

log = logging.getLogger(__name__)

RunFn = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
_ShapeKey = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_batch_size: int = 64
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 256
    retry_after_s: float = 1.0


@dataclass(slots=True, eq=False)
class _Pending:
    inputs: Mapping[str, np.ndarray]
    rows: int
    key: _ShapeKey
    future: asyncio.Future[dict[str, np.ndarray]]
    enqueued: float
    queued: bool = True


class DynamicBatcher:
    """Queue, group, run and split requests for one model."""

    def __init__(
        self,
        label: str,
        run: RunFn,
        *,
        policy: BatchPolicy,
        batchable: bool,
        executor: Executor,
        metrics: WorkerMetrics,
    ) -> None:
        self.label = label
        self._run_fn = run
        self._policy = policy
        self._batchable = batchable
        self._executor = executor
        self._metrics = metrics
        self.stats: ModelStats = metrics.model(label)
        self._queue: deque[_Pending] = deque()
        self._live = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._last_rows = 1
        self._m_batch = metrics.batch_size.labels(label)
        self._m_queue = metrics.queue_time.labels(label)
        self._m_compute = metrics.compute_time.labels(label)
        self._m_request = metrics.request_time.labels(label)
        # Gauges read the counters when scraped: nothing to update per request.
        stats = self.stats
        metrics.queue_depth.labels(label).set_function(lambda: stats.queue_depth)
        metrics.in_flight.labels(label).set_function(lambda: stats.in_flight)
        self._m_ok = metrics.requests.labels(label, "ok")
        self._m_failed = metrics.requests.labels(label, "failed")
        self._m_rejected = metrics.requests.labels(label, "rejected")
        self._m_dropped = metrics.requests.labels(label, "dropped")

    # -- lifecycle ---------------------------------------------------------------
    async def warm_up(self, inputs: dict[str, np.ndarray], rows: int = 1) -> None:
        """Run ``inputs`` twice before serving: the first run pays one-time costs, the
        second seeds the capacity estimate the region agent reports."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._run_fn, inputs)
            start = time.monotonic()
            await loop.run_in_executor(self._executor, self._run_fn, inputs)
        except Exception as exc:  # a model that cannot take the sample still serves
            log.info("warm-up of %s skipped: %s", self.label, exc)
            return
        self.stats.observe_compute(rows, time.monotonic() - start, weight=1.0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.label}")

    async def stop(self, *, drain_s: float = 10.0) -> None:
        """Stop taking requests; answer what is queued (up to ``drain_s``), refuse the rest."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(drain_s):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
            self._task = None
        while self._queue:
            item = self._queue.popleft()
            item.queued = False
            if not item.future.done():
                item.future.set_exception(Unavailable(f"model '{self.label}' was unloaded"))
        self._set_depth(0)

    # -- submitting ----------------------------------------------------------------
    async def infer(
        self, inputs: Mapping[str, np.ndarray], *, timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs.

        Cancelling the caller (client gone) or the timeout cancels the queued
        request, which the batcher then skips.
        """
        future = self.submit(inputs)
        if timeout_s is None:
            return await future
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            raise UpstreamTimeout(
                f"model '{self.label}' did not answer within {timeout_s:.3f}s"
            ) from None

    def submit(self, inputs: Mapping[str, np.ndarray]) -> asyncio.Future[dict[str, np.ndarray]]:
        if self._closed:
            raise Unavailable(f"model '{self.label}' is not loaded", retry_after=1.0)
        if self._live >= self._policy.max_queue_size:
            self.stats.rejected += 1
            self._m_rejected.inc()
            raise Unavailable(
                f"model '{self.label}' queue is full ({self._policy.max_queue_size} requests)",
                retry_after=self._policy.retry_after_s,
            )
        first = next(iter(inputs.values()))
        rows = int(first.shape[0]) if self._batchable and first.ndim else 1
        key: _ShapeKey = tuple(
            (name, a.dtype.str, tuple(a.shape[1:])) for name, a in sorted(inputs.items())
        )
        future: asyncio.Future[dict[str, np.ndarray]] = asyncio.get_running_loop().create_future()
        item = _Pending(inputs, rows, key, future, time.monotonic())
        future.add_done_callback(functools.partial(self._on_done, item))
        self._queue.append(item)
        self._live += 1
        self.stats.in_flight += 1
        self._set_depth(self._live)
        self._wakeup.set()
        return future

    def _on_done(self, item: _Pending, future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        if not future.cancelled():
            return
        self.stats.dropped += 1
        self._m_dropped.inc()
        self.stats.in_flight -= 1
        if item.queued:
            item.queued = False
            self._live -= 1
            self._set_depth(self._live)

    def _set_depth(self, depth: int) -> None:
        self.stats.queue_depth = depth

    # -- the batching loop ---------------------------------------------------------
    def _drop_dead_head(self) -> None:
        while self._queue and not self._queue[0].queued:
            self._queue.popleft()

    def _rows_ready(self, key: _ShapeKey) -> int:
        return sum(i.rows for i in self._queue if i.queued and i.key == key)

    def _take(self, key: _ShapeKey) -> list[_Pending]:
        limit = self._policy.max_batch_size if self._batchable else 1
        batch: list[_Pending] = []
        rest: deque[_Pending] = deque()
        rows = 0
        for item in self._queue:
            if not item.queued:
                continue
            if item.key == key and (not batch or rows + item.rows <= limit):
                item.queued = False
                batch.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self._queue = rest
        self._live -= len(batch)
        self._set_depth(self._live)
        return batch

    async def _loop(self) -> None:
        limit = self._policy.max_batch_size if self._batchable else 1
        while True:
            self._drop_dead_head()
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            deadline = head.enqueued + self._policy.max_queue_delay_s
            # Wait for the batch to fill only as far as recent load suggests: a
            # lone client (last batch one request) is answered at once instead
            # of paying the full delay for rows that are not coming.
            target = min(limit, self._last_rows)
            while head.queued and self._rows_ready(head.key) < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wakeup.wait()
                except TimeoutError:
                    break
            if not head.queued:
                continue
            await self._run(self._take(head.key))

    async def _run(self, batch: list[_Pending]) -> None:
        start = time.monotonic()
        for item in batch:
            self._m_queue.observe(start - item.enqueued)
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([i.inputs[name] for i in batch]) for name in batch[0].inputs
            }
        total = sum(i.rows for i in batch)
        self._last_rows = max(1, total)
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._run_fn, inputs)
        except MeridianError as exc:
            self._fail(batch, exc)
            return
        except Exception:
            log.exception("engine failed on a batch of %d rows for %s", total, self.label)
            self._fail(batch, MeridianError("internal error while running the model"))
            return
        done = time.monotonic()
        self._m_compute.observe(done - start)
        self._m_batch.observe(total)
        self.stats.batches += 1
        self.stats.rows += total
        self.stats.observe_compute(total, done - start)
        if len(batch) == 1:
            answered = self._finish(batch[0], outputs, done)
        elif any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            self._fail(batch, MeridianError(f"model '{self.label}' outputs are not batched"))
            return
        else:
            answered = 0
            offset = 0
            for item in batch:
                end = offset + item.rows
                answered += self._finish(item, {k: v[offset:end] for k, v in outputs.items()}, done)
                offset = end
        self._m_ok.inc(answered)

    def _finish(self, item: _Pending, outputs: dict[str, np.ndarray], now: float) -> int:
        if item.future.done():  # cancelled while running: already counted as dropped
            return 0
        item.future.set_result(outputs)
        self.stats.in_flight -= 1
        self.stats.completed(now - item.enqueued, now)
        self._m_request.observe(now - item.enqueued)
        return 1

    def _fail(self, batch: list[_Pending], exc: MeridianError) -> None:
        for item in batch:
            if item.future.done():
                continue
            item.future.set_exception(exc)
            self.stats.in_flight -= 1
            self.stats.failures += 1
            self._m_failed.inc()
