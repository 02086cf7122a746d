"""Waiting for an ``asyncio.Event`` with a timeout, cancellation-safe.

``asyncio.wait_for(event.wait(), t)`` on Python 3.11 can swallow a cancellation
that arrives just as the event is set, leaving an owned task impossible to stop;
``asyncio.timeout`` does not have that flaw.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True once ``event`` is set, False when ``timeout`` seconds pass first."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
