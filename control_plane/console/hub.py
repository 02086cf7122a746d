"""One publisher of the console's fleet state, shared by every connected console.

:class:`ConsoleHub` builds the state (``control_plane.console.state``) when the routing
snapshot changes and at least every ``tick_s`` (the snapshot's age moves on), at most
every ``min_interval_s``; encodes it once as a server-sent ``state`` event (without the
regions' GPUs and workers); and offers it to each subscriber's bounded queue, with a
``region`` event of GPUs and workers for the one region a subscriber shows, if any.
Each message is complete, so a queue that is full (a slow client) drops its oldest
message: the client skips to the latest. It also keeps
a short history per region (queue depth, latency, time to first token) for the region
page's charts, sampled once a second.

Its one task is owned by the fleet plane (started and stopped with it); :meth:`close`
ends every subscriber's stream, so a server can stop without waiting on open streams.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from control_plane.console.state import region_sample, split_details
from meridian.background import cancel_and_wait

__all__ = ["ConsoleHub", "Subscriber", "sse_frame"]

log = logging.getLogger(__name__)

# what ends a subscriber's stream
_CLOSE = b""


def sse_frame(event: str, data: bytes) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[bytes]
    region: str | None = None  # whose GPUs and workers it receives too (a region page)
    dropped: int = 0


class ConsoleHub:
    def __init__(
        self,
        build: Callable[[], Awaitable[dict[str, Any]]],
        wait_change: Callable[[float], Awaitable[bool]],
        *,
        min_interval_s: float = 0.25,
        tick_s: float = 1.0,
        queue_size: int = 8,
        history_s: float = 300.0,
        sample_s: float = 1.0,
    ) -> None:
        """``build``: the current state; ``wait_change(timeout)``: returns once the
        routing snapshot changed (True) or after ``timeout`` (False)."""
        self._build = build
        self._wait_change = wait_change
        self.min_interval_s = min_interval_s
        self.tick_s = tick_s
        self.queue_size = queue_size
        self.sample_s = sample_s
        self._history_len = max(1, int(history_s / sample_s))
        self._subscribers: set[Subscriber] = set()
        self._history: dict[str, collections.deque[tuple[float, ...]]] = {}
        self._last_sample = 0.0
        self.latest: bytes = b""  # the latest state event, given to new subscribers first
        self._details: dict[str, dict[str, Any]] = {}
        self._detail_frames: dict[str, bytes] = {}
        self.published = 0
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- subscribers -----------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self, region: str | None = None) -> Subscriber:
        """A new subscriber, given the latest state at once (and the latest details of
        ``region``: its GPUs and workers, as ``region`` events)."""
        sub = Subscriber(asyncio.Queue(maxsize=self.queue_size), region)
        if self.latest:
            sub.queue.put_nowait(self.latest)
            detail = self._detail_frame(region)
            if detail:
                sub.queue.put_nowait(detail)
        if self.closed:
            _offer(sub, _CLOSE)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def stream(
        self, sub: Subscriber, *, keepalive_s: float = 15.0, max_s: float = 300.0
    ) -> AsyncIterator[bytes]:
        """The subscriber's messages as SSE frames, a comment line when idle (keeps proxies
        from closing the connection), until the hub closes or ``max_s`` passed."""
        deadline = time.monotonic() + max_s
        try:
            yield b"retry: 1000\n\n"
            while (left := deadline - time.monotonic()) > 0:
                try:
                    async with asyncio.timeout(min(keepalive_s, left)):
                        message = await sub.queue.get()
                except TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                if message == _CLOSE:
                    return
                yield message
        finally:
            self.unsubscribe(sub)

    # --- history ---------------------------------------------------------------------------

    def history(self, region: str) -> list[tuple[float, ...]]:
        """``(wall time, queue depth, p50 ms, p99 ms, TTFT ms)``, oldest first."""
        return list(self._history.get(region, ()))

    def _sample(self, state: dict[str, Any], now: float) -> None:
        if now - self._last_sample < self.sample_s:
            return
        self._last_sample = now
        names = set()
        for region in state["regions"]:
            names.add(region["name"])
            samples = self._history.get(region["name"])
            if samples is None:
                samples = self._history[region["name"]] = collections.deque(
                    maxlen=self._history_len
                )
            samples.append((round(now, 1), *region_sample(region)))
        for gone in set(self._history) - names:
            del self._history[gone]

    # --- publishing ------------------------------------------------------------------------

    def _detail_frame(self, region: str | None) -> bytes:
        """The ``region`` event of the latest state for ``region``, encoded at most once
        per state (only for regions some console shows)."""
        if region is None or region not in self._details:
            return b""
        frame = self._detail_frames.get(region)
        if frame is None:
            frame = self._detail_frames[region] = sse_frame(
                "region", orjson.dumps(self._details[region])
            )
        return frame

    async def publish_once(self) -> None:
        state = await self._build()
        self._sample(state, time.time())
        summary, self._details = split_details(state)
        self._detail_frames = {}
        self.latest = sse_frame("state", orjson.dumps(summary))
        self.published += 1
        for sub in list(self._subscribers):
            _offer(sub, self.latest)
            detail = self._detail_frame(sub.region)
            if detail:
                _offer(sub, detail)

    async def run(self) -> None:
        while True:
            try:
                await self.publish_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("building the console's state failed")
            await asyncio.sleep(self.min_interval_s)
            await self._wait_change(max(0.0, self.tick_s - self.min_interval_s))

    def start(self) -> None:
        self.closed = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self.run(), name="console-hub")

    def end_streams(self) -> None:
        """End every subscriber's stream now, and those that open from now on (on the
        hub's loop). A server that is stopping waits for its open responses to finish:
        call this first so that it need not wait for the consoles' streams."""
        self.closed = True
        for sub in list(self._subscribers):
            _offer(sub, _CLOSE)

    def end_streams_soon(self) -> None:
        """:meth:`end_streams` from any thread, or from a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.end_streams)

    async def close(self) -> None:
        """Stop publishing and end every subscriber's stream."""
        self.end_streams()
        await cancel_and_wait(self._task)
        self._task = None


def _offer(sub: Subscriber, message: bytes) -> None:
    """Put ``message`` on the subscriber's queue; when it is full, drop the oldest."""
    while True:
        try:
            sub.queue.put_nowait(message)
            return
        except asyncio.QueueFull:
            with contextlib.suppress(asyncio.QueueEmpty):
                sub.queue.get_nowait()
                sub.dropped += 1
