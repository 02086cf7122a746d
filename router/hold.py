"""The hold verdict: a bounded per-key fair queue for ``batch`` requests.

When the fleet's load for a model is over the batch ceiling but under the interactive
one, a batch request is held here instead of refused (``AdmissionConfig.hold_batch``).
It waits in its key's queue (the API key, or the client's address without keys); as the
load falls below the ceiling the queue releases requests one at a time, taking the keys
in turn (round robin), so one key with a thousand requests waiting does not hold back a
key with one. Every held request is answered: released (it is routed), or refused with
503 and ``Retry-After`` when the queue or its key's share is full, when it would still be
waiting once its deadline can no longer be met, or when the router stops.

Releases happen when a routed request finishes (``pump``: a slot may have freed) and on a
short tick while anything is held (the load also falls as snapshots arrive); at most one
per pump, so what was released is dispatched (and counted in the load) before the next.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["HoldQueue", "Outcome"]

Outcome = Literal["released", "full", "expired", "closed"]


@dataclass(eq=False, slots=True)
class _Held:
    key: str
    model: str
    future: asyncio.Future[Outcome] = field(repr=False)


class HoldQueue:
    """Held requests per key, released round robin while ``can_release(model)`` says the
    model's load has room. ``max_held``: at most this many at once; ``max_per_key``: at
    most this many of one key (0: ``max_held``)."""

    def __init__(
        self,
        max_held: int,
        can_release: Callable[[str], bool],
        *,
        max_per_key: int = 0,
        tick_s: float = 0.02,
    ) -> None:
        self.max_held = max_held
        self.max_per_key = max_per_key or max_held
        self.can_release = can_release
        self.tick_s = tick_s
        self._queues: OrderedDict[str, deque[_Held]] = OrderedDict()  # next key first
        self.held = 0
        self.counts: dict[str, int] = {"released": 0, "expired": 0, "full": 0, "closed": 0}
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return self.held

    async def hold(self, key: str, model: str, wait_s: float) -> Outcome:
        """Wait at most ``wait_s`` for a release; what happened to the request."""
        queue = self._queues.get(key)
        if self._closed:
            return self._count("closed")
        if self.held >= self.max_held or (queue is not None and len(queue) >= self.max_per_key):
            return self._count("full")
        if wait_s <= 0:
            return self._count("expired")
        entry = _Held(key, model, asyncio.get_running_loop().create_future())
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(entry)
        self.held += 1
        self._start_ticker()
        try:
            outcome = await asyncio.wait_for(asyncio.shield(entry.future), wait_s)
        except TimeoutError:
            released = entry.future.done() and not entry.future.cancelled()
            outcome = entry.future.result() if released else "expired"
        finally:
            self._remove(entry)  # cancelled, expired: out of the queue either way
        return self._count(outcome)

    def _count(self, outcome: Outcome) -> Outcome:
        self.counts[outcome] += 1
        return outcome

    def _remove(self, entry: _Held) -> None:
        queue = self._queues.get(entry.key)
        if queue is not None and entry in queue:
            queue.remove(entry)
            self.held -= 1
            if not queue:
                del self._queues[entry.key]
        if not entry.future.done():
            entry.future.cancel()

    def pump(self) -> str | None:
        """Release the first request, taking the keys in turn, whose model has room now;
        its key, or None when none was."""
        for key in list(self._queues):
            queue = self._queues[key]
            entry = queue[0]
            if entry.future.done() or not self.can_release(entry.model):
                continue
            queue.popleft()
            self.held -= 1
            if queue:
                self._queues.move_to_end(key)  # its next request waits for the others' turn
            else:
                del self._queues[key]
            entry.future.set_result("released")
            return key
        return None

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="hold-tick")

    async def _tick(self) -> None:
        while self.held:
            self.pump()
            await asyncio.sleep(self.tick_s)

    async def close(self) -> None:
        """Answer every held request (``closed``: the router refuses it) and stop."""
        self._closed = True
        for queue in list(self._queues.values()):
            for entry in list(queue):
                if not entry.future.done():
                    entry.future.set_result("closed")
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await asyncio.sleep(0)  # let the waiters take their answers
