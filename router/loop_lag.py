"""How long the router's own event loop could not run, so that its stalls are not blamed on
the regions.

A router on a starved CPU (a collection, a noisy neighbour, a burst of its own work) reads
an upstream's answer late; the attempt then looks slow by the stall, and a region that was
fast loses its traffic. A ticker wakes every ``interval_s`` and adds up how late it woke:
the stall that accrued between two readings of :meth:`LoopLag.stalled_ms` is time the
router, not the upstream, was busy, and the attempt's unexplained wait leaves it out.
"""

from __future__ import annotations

import asyncio

from meridian.background import cancel_and_wait

__all__ = ["LoopLag"]


class LoopLag:
    def __init__(self, interval_s: float = 0.01) -> None:
        self.interval_s = interval_s
        self._stalled_s = 0.0  # summed lateness of the ticks that woke
        self._due: float | None = None  # when the next tick should wake
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._tick(), name="loop lag")

    async def close(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    def stalled_ms(self) -> float:
        """The loop's stall so far, in ms, including the one under way (a tick overdue):
        never decreasing, so the difference of two readings is the stall between them."""
        due = self._due
        if due is None:
            return 0.0
        overdue = asyncio.get_running_loop().time() - due
        return (self._stalled_s + max(overdue, 0.0)) * 1000.0

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self._stalled_s += max(loop.time() - self._due, 0.0)
