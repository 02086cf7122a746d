"""One attempt of a request on one worker, and its hedge.

:meth:`Attempts.attempt` sends the request to a worker and gives the answer (a stream is
handed over with its worker's outstanding count held until it ends, and timed for the
region's TTFT and TPOT) or why it failed, for the core's failover loop to go on.
:meth:`Attempts.hedged` races it against a copy on another worker once it has waited
longer than the model's recent p95 at this router, within the hedge budget
(``router.hedging``); the first answer wins, the other is cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from meridian.deadline import DEADLINE_HEADER
from meridian.snapshot import RegionView, RoutingSnapshot, WorkerView
from router.continuation import Generation
from router.figures import served_version
from router.http11 import Response, StreamResponse
from router.policies import RouteRequest, choose_worker
from router.replies import EVENT_STREAM, header_value
from router.streaming import StreamWatch
from router.upstream import UpstreamConnectError, UpstreamError, UpstreamResponse, UpstreamStream

if TYPE_CHECKING:
    from router.core import RouterCore

__all__ = ["Attempts", "Call"]

DEADLINE_MARGIN_MS = 2.0  # kept back from the budget passed on, for the answer's way back
SILENT_LOSSES = 2  # hedges lost in a row, silent, that put a worker on probation


@dataclass(slots=True)
class Call:
    """What every attempt of one request shares."""

    snap: RoutingSnapshot
    route: RouteRequest
    model: str
    method: str
    query: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    deadline: float
    stream: bool
    gen: Generation | None
    started: float
    client_deadline: bool = False  # the client set one: each attempt passes on what is left
    deadline_ran_out: bool = False  # an attempt ended for want of the client's time left


async def _answered_within(task: asyncio.Future[Any], delay: float) -> bool:
    """Whether ``task`` is done within ``delay`` seconds (it is left running if not): what
    ``asyncio.wait`` with a timeout does, for one task, without its sets and extra future
    (this runs for every request once the model has a p95)."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = loop.call_later(delay, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


async def _discard(result: Response | StreamResponse | str) -> None:
    """An answer that lost a race: a stream is closed (its worker freed)."""
    if isinstance(result, StreamResponse):
        aclose = getattr(result.chunks, "aclose", None)
        if aclose is not None:
            await aclose()


class Attempts:
    """The attempts of one :class:`RouterCore` (whose state they read and update)."""

    def __init__(self, core: RouterCore) -> None:
        self.core = core
        # hedges each worker lost in a row while silent (an answer from it resets this)
        self.silent_losses: dict[str, int] = {}

    def target(
        self,
        snap: RoutingSnapshot,
        model: str,
        version: str | None,
        rest: str,
        region: str,
        target_path: str | None,
    ) -> str:
        """The worker path to call in ``region`` (a weighted version pick for ``infer``)."""
        return self.place(snap, model, version, rest, region, target_path)[0]

    def place(
        self,
        snap: RoutingSnapshot,
        model: str,
        version: str | None,
        rest: str,
        region: str,
        target_path: str | None,
    ) -> tuple[str, str | None]:
        """The worker path to call in ``region`` and the version it names (the client's, or
        one picked by the deployments' traffic weights for ``infer``; None: any)."""
        core = self.core
        chosen = version
        if chosen is None and rest == "infer":
            dep = core.version_picker(snap).pick(model, region, core.rng)
            chosen = dep.version if dep is not None else None
        if target_path is not None:
            return target_path, chosen
        tail = ("/" + rest) if rest else ""
        path = f"/v2/models/{model}" + (f"/versions/{chosen}" if chosen else "") + tail
        return path, chosen

    @staticmethod
    def unversioned(model: str, rest: str, target_path: str | None) -> str:
        """The path naming no version (the worker answers with the one it has)."""
        if target_path is not None:
            return target_path
        return f"/v2/models/{model}" + (("/" + rest) if rest else "")

    async def attempt(
        self, call: Call, region: RegionView, worker: WorkerView, target: str, attempts: int
    ) -> Response | StreamResponse | str:
        """One try on ``worker``: the answer, or why it failed (a retry may follow)."""
        core = self.core
        s = core.settings
        name, wid = region.name, worker.worker_id
        host, port = core.endpoint(worker.endpoint)
        figures = core.figures.of(call.model, served_version(target, worker, call.model), name)
        now = time.monotonic()
        core.observed.dispatch(name, now)
        core.outstanding[wid] += 1
        held = True  # released here, or by a stream when it ends
        sent = now
        stall_from = core.lag.stalled_ms()
        try:
            if s.emulate_wan:
                await core.wan_delay(call.snap, call.route, name)
                sent = time.monotonic()
            left = call.deadline - time.monotonic()
            # the worker gets the budget less a margin for the way back, so that it answers
            # (504) before this attempt's own timeout fires
            passed_ms = left * 1000.0 - DEADLINE_MARGIN_MS - core.pool.network_ms(host, port)
            if left <= 0 or (call.client_deadline and passed_ms <= 0):
                core.observed.abandoned(name)
                call.deadline_ran_out = call.client_deadline
                return f"region {name}: deadline passed before the request was sent"
            timeout = min(s.attempt_timeout_s, left)
            headers = call.headers
            if call.client_deadline:
                headers = [*headers, (DEADLINE_HEADER, f"{passed_ms:.1f}".encode())]
            upstream: UpstreamResponse | UpstreamStream
            path = target + call.query
            if call.stream:
                opened = await core.pool.stream(
                    host, port, call.method, path, headers, call.body, timeout
                )
                if opened.status < 500 and EVENT_STREAM in header_value(
                    opened.headers, b"content-type"
                ):
                    first = time.monotonic()
                    took_ms = core.took_ms(sent, stall_from, first)
                    excess_ms = core.excess_ms(took_ms, host, port, worker)
                    core.observed.success(name, took_ms, excess_ms, first)
                    core.hedging.observe(call.model, True, took_ms)
                    figures.answered(took_ms)
                    figures.first_token(took_ms)
                    core.counters["served"] += 1
                    core.counters["streamed"] += 1
                    relay = core.openai.relay(opened, call.gen, name, wid, call.route)
                    held = False
                    return StreamResponse(
                        opened.status,
                        core.out_headers(opened.headers, name, attempts),
                        self._watched(relay, call, name, wid),
                    )
                upstream = opened
                body = await opened.read(s.stream_idle_timeout_s)
            else:
                response = await core.pool.request(
                    host, port, call.method, path, headers, call.body, timeout
                )
                upstream, body = response, response.body
        except UpstreamConnectError as exc:
            figures.failed()
            core.refused(call.snap, region, call.model, worker, time.monotonic())
            core.counters["upstream_failures"] += 1
            return f"region {name}: {exc}"
        except TimeoutError:
            now = time.monotonic()
            if call.client_deadline and now >= call.deadline - 0.001:
                # the client's deadline, not the region, ran out: a long wait, not an error
                waited_ms = core.took_ms(sent, stall_from, now)
                core.observed.success(name, waited_ms, waited_ms, now)
                core.counters["deadline_timeouts"] += 1
                call.deadline_ran_out = True
                return f"region {name}: no answer within the request's deadline"
            core.observed.error(name, now)
            core.counters["upstream_failures"] += 1
            figures.failed()
            return f"region {name}: timed out"
        except UpstreamError as exc:
            figures.failed()
            core.observed.error(name, time.monotonic())
            core.counters["upstream_failures"] += 1
            return f"region {name}: {exc or 'timed out'}"
        except asyncio.CancelledError:
            core.observed.abandoned(name)  # its hedge answered first, or the client left
            # for the version's figures it took at least this long (a hedge must not hide
            # a slow version from its latency gate)
            figures.answered((time.monotonic() - sent) * 1000.0)
            raise
        finally:
            if held:
                core.outstanding[wid] -= 1
        done = time.monotonic()
        if upstream.status == 504 and call.client_deadline:
            # the worker dropped it, its deadline passed in the queue: answer that, retrying
            # is hopeless; the region was slow, not broken
            waited_ms = core.took_ms(sent, stall_from, done)
            core.observed.success(name, waited_ms, waited_ms, done)
            core.counters["deadline_dropped_upstream"] += 1
            return Response(504, body, core.out_headers(upstream.headers, name, attempts))
        if upstream.status >= 500:
            figures.failed()
            core.observed.error(name, done)
            core.counters["upstream_5xx"] += 1
            return f"region {name} answered {upstream.status}"
        took_ms = core.took_ms(sent, stall_from, done)
        excess_ms = core.excess_ms(took_ms, host, port, worker)
        core.observed.success(name, took_ms, excess_ms, done)
        core.hedging.observe(call.model, False, took_ms)
        figures.answered(took_ms)
        if upstream.status == 200 and target.endswith("/infer") and not call.stream:
            core.mirrors.after_answer(
                call.snap,
                region,
                call.model,
                served_version(target, worker, call.model),
                call.method,
                call.query,
                call.headers,
                call.body,
                body,
            )
        core.outliers.observe(wid, excess_ms, done)
        self.silent_losses.pop(wid, None)
        if not core.outliers.quiet:
            core.outliers.readmit(wid)  # it answered (tried in a panic)
            core.probes.start_due(
                call.snap, call.model, path, call.method, call.headers, call.body, done
            )
        core.counters["served"] += 1
        return Response(upstream.status, body, core.out_headers(upstream.headers, name, attempts))

    def _watched(
        self, chunks: AsyncIterator[bytes], call: Call, region: str, worker_id: str
    ) -> StreamWatch:
        """The stream, holding its worker's outstanding count until it ends, and timing its
        first token and the tokens after it for the region's metrics."""
        core = self.core
        gen, first_at = call.gen, [0.0]

        def first() -> None:
            first_at[0] = time.monotonic()
            core.generation.ttft.observe(region, first_at[0] - call.started)

        def end() -> None:
            core.outstanding[worker_id] -= 1
            tokens = len(gen.sent_ids) if gen is not None else 0
            if first_at[0] and tokens > 1:
                per_token = (time.monotonic() - first_at[0]) / (tokens - 1)
                core.generation.tpot.observe(region, per_token)

        return StreamWatch(chunks, first, end)

    def hedge_choice(
        self,
        call: Call,
        region: RegionView,
        worker: WorkerView,
        later: Sequence[str],
        serving: Sequence[WorkerView],
        version: str | None,
        rest: str,
        target_path: str | None,
        primary_target: str | None = None,
        chosen: str | None = None,
    ) -> tuple[RegionView, WorkerView, str] | None:
        """Where a hedge of an attempt on ``worker`` goes: another usable worker of its
        region (for the same path: the same version), else one passed over as slow but
        not ejected (slow beats silent), else the best worker of the next region in the
        ranking."""
        core = self.core
        others = [w for w in serving if w.worker_id != worker.worker_id]
        if not others:
            others = [w for w in core.workers(call.snap, region, call.model, chosen)
                      if w.worker_id != worker.worker_id
                      and not core.outliers.is_ejected(w.worker_id)]  # fmt: skip
        other = choose_worker(others, core.rng, core.outstanding)
        if other is not None:
            if primary_target is not None:
                return region, other, primary_target
            return region, other, self.target(call.snap, call.model, version, rest,
                                               region.name, target_path)  # fmt: skip
        now = time.monotonic()
        for name in later:
            nxt = call.snap.region(name)
            if nxt is None:
                continue
            target, picked = self.place(call.snap, call.model, version, rest, name, target_path)
            workers: Sequence[WorkerView] = core.workers(call.snap, nxt, call.model, picked)
            if picked and not workers and version is None:
                target = self.unversioned(call.model, rest, target_path)
                workers = core.workers(call.snap, nxt, call.model)
            if not core.outliers.quiet:
                workers = core.outliers.usable(workers, now)
            other = choose_worker(workers, core.rng, core.outstanding)
            if other is not None:
                return nxt, other, target
        return None

    def _lost(self, worker_id: str, sent: float) -> None:
        """``worker_id`` was still silent when its hedge answered. Once is a race lost;
        ``SILENT_LOSSES`` in a row with no answer between is a worker that hangs: it goes
        on probation as slow at once (so requests pass it over, and shadow probes readmit
        it when it answers quickly again)."""
        n = self.silent_losses[worker_id] = self.silent_losses.get(worker_id, 0) + 1
        if n >= SILENT_LOSSES:
            now = time.monotonic()
            self.core.outliers.silent(worker_id, (now - sent) * 1000.0, now)

    async def hedged(
        self,
        call: Call,
        first: Coroutine[object, object, Response | StreamResponse | str],
        worker: WorkerView,
        backup: Callable[[], tuple[RegionView, WorkerView, str] | None],
        delay: float,
        attempts: int,
    ) -> Response | StreamResponse | str:
        """``first``; if it has not answered within ``delay`` (the model's recent p95), a
        copy on ``backup()`` too, within the hedge budget: the first answer wins and the
        other attempt is cancelled (see :meth:`_lost` for what a loss tells of a worker)."""
        core = self.core
        primary = asyncio.ensure_future(first)
        tasks = [primary]
        try:
            if await _answered_within(primary, delay):
                return primary.result()
            now = time.monotonic()
            choice = backup()
            if choice is None or now >= call.deadline or not core.hedging.budget.try_retry(now):
                return await primary
            region, other, target = choice
            core.counters["hedges_sent"] += 1
            hedge = asyncio.ensure_future(self.attempt(call, region, other, target, attempts + 1))
            tasks.append(hedge)
            last = "no attempt answered"
            while True:
                await asyncio.wait([t for t in tasks if not t.done()],
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for t in tasks:  # the primary first when both are in
                    if not t.done() or t.cancelled():
                        continue
                    result = t.result()
                    if isinstance(result, str):
                        last = result
                        continue
                    if t is hedge:
                        core.counters["hedges_won"] += 1
                        if not primary.done():
                            self._lost(worker.worker_id, now - delay)
                    for u in tasks:
                        if u is not t and u.done() and not u.cancelled():
                            await _discard(u.result())
                    return result
                if all(t.done() for t in tasks):
                    return last
        finally:
            for t in tasks:
                if not t.done():
                    t.cancel()
