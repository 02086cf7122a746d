"""The one way a router talks to the control plane over HTTP: its reports.

Demand for scaled-to-zero models (``router.demand``), traffic for the console
(``router.traffic``) and per-version figures for rollouts (``router.figures``) are all
``POST``\\ s with the router's token to the first control-plane replica that answers:
no answer or a 5xx moves on to the next replica, a 4xx is a refusal and is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

log = logging.getLogger(__name__)

__all__ = ["ControlPlaneClient"]


class ControlPlaneClient:
    """``POST`` to the first of ``base_urls`` that answers. Shared by a router's reporters
    and closed by its owner once they have stopped."""

    def __init__(
        self,
        base_urls: list[str],
        token: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in base_urls]
        self._client = httpx.AsyncClient(
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(2.0, connect=1.0),
            transport=transport,
        )

    async def post(self, path: str, body: Any, what: str) -> bool:
        """True once a replica took ``body`` (2xx); False when one refused it (4xx) or none
        answered. Either failure is logged, naming ``what`` was sent."""
        last = "no control plane configured"
        for url in self.urls:
            try:
                response = await self._client.post(url + path, json=body)
            except httpx.HTTPError as exc:
                last = f"{url}: {exc or type(exc).__name__}"
                continue
            if response.status_code >= 500:
                last = f"{url} answered {response.status_code}"
                continue
            if response.status_code >= 400:
                log.warning("%s refused: %s", what, response.text[:200])
                return False
            return True
        log.warning("could not send %s: %s", what, last)
        return False

    async def close(self) -> None:
        await self._client.aclose()
