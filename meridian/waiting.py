"""Waiting on conditions with deadlines (never sleeping as synchronization)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["wait_until", "wait_until_async"]


def wait_until(
    predicate: Callable[[], T], *, timeout: float, interval: float = 0.02, what: str = "condition"
) -> T:
    """Poll ``predicate`` until it returns a truthy value or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout:.1f}s")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]] | Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.02,
    what: str = "condition",
) -> T:
    """Async twin of :func:`wait_until`; ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not met within {timeout:.1f}s")
        await asyncio.sleep(interval)
