"""Relaying a worker's streamed answer to the client as it comes.

Plain chunked answers (``/generate_stream``, anything not an OpenAI stream) pass
through piece by piece. OpenAI streams are cut into server-sent events so that the
router can strip the worker's token-id extension and, when the worker breaks off
mid-stream, splice in a continuation from another worker (``router.continuation``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from router.continuation import Generation
from router.upstream import UpstreamError, UpstreamStream

__all__ = ["Resume", "relay_generation", "relay_raw"]

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
