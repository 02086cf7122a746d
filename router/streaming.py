"""Relaying a worker's streamed answer to the client as it comes.

Plain chunked answers (``/generate_stream``, anything not an OpenAI stream) pass
through piece by piece. OpenAI streams are cut into server-sent events so that the
router can strip the worker's token-id extension and, when the worker breaks off
mid-stream, splice in a continuation from another worker (``router.continuation``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from router.continuation import Generation
from router.upstream import UpstreamError, UpstreamStream

__all__ = ["Resume", "StreamWatch", "relay_generation", "relay_raw"]

# (continuation body, worker ids already tried) → the next upstream and its region, or None
Resume = Callable[[bytes, set[str]], Awaitable[tuple[UpstreamStream, str, str] | None]]
Failed = Callable[[str], None]


async def relay_raw(upstream: UpstreamStream, idle_timeout: float) -> AsyncIterator[bytes]:
    try:
        async for piece in upstream.chunks(idle_timeout):
            yield piece
    finally:
        upstream.close()


async def relay_generation(
    upstream: UpstreamStream,
    gen: Generation,
    region: str,
    worker_id: str,
    idle_timeout: float,
    resume: Resume,
    failed: Failed,
) -> AsyncIterator[bytes]:
    """The client's event stream; continues elsewhere if the worker breaks off."""
    tried = {worker_id}
    try:
        while True:
            buf = b""
            try:
                async for piece in upstream.chunks(idle_timeout):
                    buf += piece
                    while (end := buf.find(b"\n\n")) >= 0:
                        out = gen.event(buf[: end + 2])
                        buf = buf[end + 2 :]
                        if out:
                            yield out
                if gen.done:
                    return
                raise UpstreamError("the worker ended the stream early")
            except (UpstreamError, TimeoutError):
                upstream.close()
                failed(region)
                if gen.done:
                    return
                if gen.finished:  # broke off after the last token: close the stream here
                    yield gen.ending()
                    return
                body = gen.continuation()
                if body is None:
                    if gen.max_tokens is not None and gen.prompt_ids is not None:
                        yield gen.ending()  # every token was sent
                        return
                    raise
                nxt = await resume(body, tried)
                if nxt is None:
                    raise
                upstream, region, worker_id = nxt
                tried.add(worker_id)
                gen.begin_continuation()
    finally:
        upstream.close()


class StreamWatch:
    """``chunks`` as they come, noting when the first non-empty one passed (``first``)
    and calling ``end`` exactly once when the stream is over: exhausted, broken or
    closed, even if it was never started (an async generator that never ran would not
    run its ``finally``)."""

    def __init__(
        self,
        chunks: AsyncIterator[bytes],
        first: Callable[[], None],
        end: Callable[[], None],
    ) -> None:
        self._chunks = chunks
        self._first: Callable[[], None] | None = first
        self._end: Callable[[], None] | None = end

    def __aiter__(self) -> StreamWatch:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except BaseException:
            self._ended()
            raise
        if chunk and self._first is not None:
            first, self._first = self._first, None
            first()
        return chunk

    def _ended(self) -> None:
        if self._end is not None:
            end, self._end = self._end, None
            end()

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        finally:
            self._ended()
