"""Dynamic batching: one batcher per loaded model.

Requests wait in a bounded queue. While the engine is idle, the batcher takes
the oldest live request and every queued request of the same shape signature
(up to ``max_batch_size`` rows), waiting at most ``max_queue_delay`` for the
batch to fill; it concatenates them along dimension 0, runs the engine once in
the model's thread and hands each request its slice of the outputs (views, no
copy). Requests of different shapes are grouped separately, never mixed. A full
queue refuses at once (``Unavailable`` with a retry hint) instead of growing
latency; a request whose caller went away (future cancelled) is skipped, and one
whose deadline passes while it waits is answered ``UpstreamTimeout`` (504) at once and
never reaches the engine (counted in ``meridian_worker_deadline_dropped_total``).
The fill wait aims at the previous batch's size (never above the maximum), so a
lone client is not delayed waiting for rows that are not coming.

The batcher has no task of its own: it acts on events, all on the event loop --
a request queued, the fill deadline passing, the engine finishing a batch. When
the engine finishes, the next batch is taken at once from what queued while it
ran, so under load batches gather while the engine is busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from concurrent.futures import Future as ThreadFuture
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


class _Pending:
    """One queued request."""

    __slots__ = (
        "batcher", "deadline", "enqueued", "expiry", "future", "inputs", "key", "queued", "rows",
    )  # fmt: skip

    def __init__(
        self,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        key: _ShapeKey,
        future: asyncio.Future[dict[str, np.ndarray]],
        enqueued: float,
    ) -> None:
        self.inputs = inputs
        self.rows = rows
        self.key = key
        self.future = future
        self.enqueued = enqueued
        self.queued = True
        self.batcher: DynamicBatcher | None = None
        self.deadline: float | None = None  # time.monotonic() past which it is not run
        self.expiry: asyncio.TimerHandle | None = None

    def on_done(self, future: asyncio.Future[dict[str, np.ndarray]]) -> None:
        if future.cancelled() and self.batcher is not None:
            self.batcher._cancelled(self)


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
        self._limit = policy.max_batch_size if batchable else 1
        self._batchable = batchable
        self._executor = executor
        self._metrics = metrics
        self.stats: ModelStats = metrics.model(label)
        self._queue: deque[_Pending] = deque()
        self._live = 0
        self._ready: dict[_ShapeKey, int] = {}  # rows queued per shape
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self._running: list[_Pending] | None = None  # the batch in the engine
        self._timer: asyncio.TimerHandle | None = None  # the fill deadline
        self._idle: asyncio.Event | None = None  # set when drained (while stopping)
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
        self._m_deadline = metrics.deadline_dropped.labels(label)

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
        """Start running batches (requests may queue before)."""
        self._event_loop()
        self._started = True
        self._dispatch()

    async def stop(self, *, drain_s: float = 10.0) -> None:
        """Stop taking requests; answer what is queued (up to ``drain_s``), refuse the rest."""
        self._closed = True
        if self._started:
            idle = self._idle = asyncio.Event()
            self._dispatch()
            if self._running is not None or self._live:
                try:
                    async with asyncio.timeout(drain_s):
                        await idle.wait()
                except TimeoutError:
                    log.warning("%s: queue not drained within %.1fs", self.label, drain_s)
        self._started = False  # nothing more goes to the engine
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            item = self._queue.popleft()
            if item.queued:
                item.queued = False
                if not item.future.done():
                    item.future.set_exception(Unavailable(f"model '{self.label}' was unloaded"))
        self._ready.clear()
        self._live = 0
        self.stats.queue_depth = 0

    # -- submitting ----------------------------------------------------------------
    async def infer(
        self, inputs: Mapping[str, np.ndarray], *, timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Queue one request and wait for its outputs.

        Cancelling the caller (client gone) or the timeout cancels the queued
        request, which the batcher then skips.
        """
        return await self.wait(self.submit(inputs), timeout_s)

    async def wait(
        self, future: asyncio.Future[dict[str, np.ndarray]], timeout_s: float | None
    ) -> dict[str, np.ndarray]:
        """The outputs of a submitted request; past ``timeout_s`` it is cancelled."""
        if timeout_s is None:
            return await future
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            # On a stalled loop the queue's own deadline (a little earlier) and this
            # timer fire in one turn: the future then holds the answer that says why
            if future.done() and not future.cancelled():
                return future.result()
            raise self.timeout_error(timeout_s) from None

    def timeout_error(self, timeout_s: float) -> UpstreamTimeout:
        return UpstreamTimeout(f"model '{self.label}' did not answer within {timeout_s:.3f}s")

    def submit(
        self, inputs: Mapping[str, np.ndarray], deadline: float | None = None
    ) -> asyncio.Future[dict[str, np.ndarray]]:
        """Queue one request; cancelling the future drops it (or its answer). Past
        ``deadline`` (``time.monotonic()``) a request still queued is answered 504."""
        if self._closed:
            raise Unavailable(f"model '{self.label}' is not loaded", retry_after=1.0)
        if self._live >= self._policy.max_queue_size:
            self.stats.rejected += 1
            self._m_rejected.inc()
            raise Unavailable(
                f"model '{self.label}' queue is full ({self._policy.max_queue_size} requests)",
                retry_after=self._policy.retry_after_s,
            )
        if len(inputs) == 1:
            ((name, first),) = inputs.items()
            key: _ShapeKey = ((name, first.dtype.str, first.shape[1:]),)
        else:
            first = next(iter(inputs.values()))
            key = tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items()))
        rows = int(first.shape[0]) if self._batchable and first.ndim else 1
        future: asyncio.Future[dict[str, np.ndarray]] = self._event_loop().create_future()
        item = _Pending(inputs, rows, key, future, time.monotonic())
        future.add_done_callback(item.on_done)
        item.batcher = self
        if deadline is not None:
            item.deadline = deadline
            item.expiry = self._event_loop().call_at(
                self._event_loop().time() + (deadline - item.enqueued), self._expired, item
            )
        self._queue.append(item)
        self._live += 1
        self._ready[key] = self._ready.get(key, 0) + rows
        stats = self.stats
        stats.in_flight += 1
        stats.queue_depth = self._live
        if self._running is None:
            self._dispatch()
        return future

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _cancelled(self, item: _Pending) -> None:
        """A queued or running request's caller went away (disconnect, timeout)."""
        if item.expiry is not None:
            item.expiry.cancel()
            item.expiry = None
        self.stats.dropped += 1
        self._m_dropped.inc()
        self.stats.in_flight -= 1
        if item.queued:
            item.queued = False
            self._live -= 1
            self._ready[item.key] -= item.rows
            self.stats.queue_depth = self._live
            if self._running is None and self._queue and self._queue[0] is item:
                self._dispatch()  # the fill wait was for this request

    def _expired(self, item: _Pending) -> None:
        """``item``'s deadline passed: if it still waits, answer 504 without running it."""
        item.expiry = None
        if not item.queued or item.future.done():
            return
        item.queued = False
        self._live -= 1
        self._ready[item.key] -= item.rows
        stats = self.stats
        stats.queue_depth = self._live
        stats.in_flight -= 1
        stats.deadline_dropped += 1
        self._m_deadline.inc()
        waited_ms = (time.monotonic() - item.enqueued) * 1000.0
        item.future.set_exception(
            UpstreamTimeout(
                f"deadline passed after {waited_ms:.0f} ms in the queue of model "
                f"'{self.label}'; dropped before running"
            )
        )
        if self._running is None and self._queue and self._queue[0] is item:
            self._dispatch()  # the fill wait was for this request

    # -- batching --------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Run the next batch if the engine is idle and one is due, else make
        sure the fill deadline will look again."""
        if self._running is not None or not self._started:
            return
        queue = self._queue
        while queue and not queue[0].queued:
            queue.popleft()
        if not queue:
            self._cancel_timer()
            if self._closed and self._idle is not None:
                self._idle.set()
            return
        head = queue[0]
        # Wait for the batch to fill only as far as recent load suggests: a
        # lone client (last batch one request) is answered at once instead
        # of paying the full delay for rows that are not coming.
        if not self._closed and self._ready[head.key] < min(self._limit, self._last_rows):
            remaining = head.enqueued + self._policy.max_queue_delay_s - time.monotonic()
            if remaining > 0:
                if self._timer is None:
                    self._timer = self._event_loop().call_later(remaining, self._deadline)
                return
        self._cancel_timer()
        self._run(self._take(head.key))

    def _deadline(self) -> None:
        self._timer = None
        self._dispatch()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _take(self, key: _ShapeKey) -> list[_Pending]:
        limit = self._limit
        batch: list[_Pending] = []
        rows = 0
        queue = self._queue
        # The common case, one shape: take from the front while it fits.
        while queue:
            item = queue[0]
            if not item.queued:
                queue.popleft()
                continue
            if item.key != key or (batch and rows + item.rows > limit):
                break
            queue.popleft()
            item.queued = False
            batch.append(item)
            rows += item.rows
        if queue and rows < limit and self._ready[key] > rows:
            # Requests of this shape wait behind others: pick them out, keep the order.
            rest: deque[_Pending] = deque()
            for item in queue:
                if not item.queued:
                    continue
                if item.key == key and rows + item.rows <= limit:
                    item.queued = False
                    batch.append(item)
                    rows += item.rows
                else:
                    rest.append(item)
            self._queue = rest
        for item in batch:
            if item.expiry is not None:
                item.expiry.cancel()
                item.expiry = None
        self._ready[key] -= rows
        self._live -= len(batch)
        self.stats.queue_depth = self._live
        return batch

    def _run(self, batch: list[_Pending]) -> None:
        """Hand ``batch`` to the engine thread; :meth:`_finished` takes it back."""
        start = time.monotonic()
        if len(batch) == 1:
            inputs = batch[0].inputs
        else:
            inputs = {
                name: np.concatenate([i.inputs[name] for i in batch]) for name in batch[0].inputs
            }
        self._running = batch
        self._last_rows = max(1, sum(i.rows for i in batch))
        loop = self._event_loop()
        try:
            job = self._executor.submit(self._run_fn, inputs)
        except RuntimeError:  # the executor is shut down: the model is going away
            self._running = None
            self._fail(batch, Unavailable(f"model '{self.label}' was unloaded"))
            return
        job.add_done_callback(
            lambda done: loop.call_soon_threadsafe(self._finished, batch, start, done)
        )

    def _finished(
        self, batch: list[_Pending], start: float, job: ThreadFuture[dict[str, np.ndarray]]
    ) -> None:
        self._running = None
        try:
            self._answer(batch, start, job)
        except Exception:  # a bug here must not leave the batch waiting forever
            log.exception("answering a batch of %s failed", self.label)
            self._fail(batch, MeridianError("internal error while running the model"))
        self._dispatch()

    def _answer(
        self, batch: list[_Pending], start: float, job: ThreadFuture[dict[str, np.ndarray]]
    ) -> None:
        total = sum(i.rows for i in batch)
        try:
            outputs = job.result()
        except MeridianError as exc:
            self._fail(batch, exc)
            return
        except Exception:
            log.exception("engine failed on a batch of %d rows for %s", total, self.label)
            self._fail(batch, MeridianError("internal error while running the model"))
            return
        done = time.monotonic()
        enqueued = np.fromiter((i.enqueued for i in batch), dtype=np.float64, count=len(batch))
        self._m_queue.observe_many(start - enqueued)
        self._m_compute.observe(done - start)
        self._m_batch.observe(total)
        stats = self.stats
        stats.batches += 1
        stats.rows += total
        stats.observe_compute(total, done - start)
        if len(batch) > 1 and any(v.ndim == 0 or v.shape[0] != total for v in outputs.values()):
            self._fail(batch, MeridianError(f"model '{self.label}' outputs are not batched"))
            return
        answered: list[bool] = []
        offset = 0
        for item in batch:
            end = offset + item.rows
            future = item.future
            if future.done():  # cancelled while running: already counted as dropped
                answered.append(False)
            else:
                future.set_result(
                    outputs if len(batch) == 1 else {k: v[offset:end] for k, v in outputs.items()}
                )
                answered.append(True)
            offset = end
        if all(answered):
            latencies = done - enqueued
        else:
            latencies = (done - enqueued)[np.array(answered)]
        stats.in_flight -= len(latencies)
        stats.completed(latencies, done)
        self._m_request.observe_many(latencies)
        self._m_ok.inc(len(latencies))

    def _fail(self, batch: list[_Pending], exc: MeridianError) -> None:
        for item in batch:
            if item.future.done():
                continue
            item.future.set_exception(exc)
            self.stats.in_flight -= 1
            self.stats.failures += 1
            self._m_failed.inc()
