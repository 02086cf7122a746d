"""Every acknowledged registry write nudges the fleet leader to reload at once.

Without it the leader would notice a new deployment, a revoked API key or a changed
limit at its next periodic reload (``registry_refresh_s``). The nudge goes through
the coordination backend, so the leader hears it whichever replica took the write.
It is sent before the response starts (the transaction has committed by then), and a
nudge that fails only costs that delay: the periodic reload still catches up.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RegistryWriteNudge"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RegistryWriteNudge:
    """ASGI middleware: after a successful write under ``/v1/``, call ``nudge`` once."""

    def __init__(
        self,
        app: ASGIApp,
        nudge: Callable[[], Awaitable[None]],
        timeout_s: float = 1.0,
        skip_prefixes: tuple[str, ...] = (),
    ) -> None:
        """``skip_prefixes``: writes that do not touch the registry (router demand hints)."""
        self.app = app
        self._nudge = nudge
        self._timeout = timeout_s
        self._skip = skip_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in READ_METHODS
            or not scope["path"].startswith("/v1/")
            or scope["path"].startswith(self._skip)
        ):
            await self.app(scope, receive, send)
            return

        async def send_after_nudge(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                try:
                    await asyncio.wait_for(self._nudge(), self._timeout)
                except Exception as exc:  # the periodic reload catches up
                    log.warning("could not nudge the fleet leader after a write: %r", exc)
            await send(message)

        await self.app(scope, receive, send_after_nudge)
