"""Per model version and region figures at the router, and their report to the control plane.

:class:`FigureBook` counts every attempt's outcome and latency by the version that served
it (``meridian.figures``). :class:`FigureReporter` posts the cumulative counts to
``POST /v1/figures`` on the first control plane that answers, every
``interval_s``, as an owned task; the control plane's rollout controller subtracts two
reports to judge a canary step's window. A router that cannot report keeps counting.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from meridian.figures import FigureKey, VersionFigures
from meridian.snapshot import WorkerView
from router.reports import ControlPlaneClient

__all__ = ["FigureBook", "FigureReporter", "served_version"]

log = logging.getLogger(__name__)


def served_version(target: str, worker: WorkerView, model: str) -> str:
    """The version a request sent to ``target`` on ``worker`` is answered by: the one in the
    path, else the worker's one loaded version of ``model`` ("" when it has several)."""
    marker = "/versions/"
    at = target.find(marker)
    if at >= 0:
        rest = target[at + len(marker) :]
        return rest.split("/", 1)[0]
    prefix = model + ":"
    found = [m[len(prefix) :] for m in worker.models if m.startswith(prefix)]
    return found[0] if len(found) == 1 else ""


class FigureBook:
    """Cumulative figures since this router started, keyed (model, version, region)."""

    def __init__(self) -> None:
        self._figures: dict[FigureKey, VersionFigures] = {}
        self.boot = uuid.uuid4().hex  # a restarted router's counters start again

    def of(self, model: str, version: str, region: str) -> VersionFigures:
        key = (model, version, region)
        found = self._figures.get(key)
        if found is None:
            found = self._figures[key] = VersionFigures()
        return found

    def report(self) -> list[dict[str, Any]]:
        return [
            {"model": m, "version": v, "region": r, **f.to_dict()}
            for (m, v, r), f in self._figures.items()
        ]


class FigureReporter:
    """Posts a :class:`FigureBook` to the control plane every ``interval_s``."""

    def __init__(
        self,
        book: FigureBook,
        client: ControlPlaneClient,
        *,
        router_id: str = "",
        interval_s: float = 1.0,
    ) -> None:
        self.book = book
        self.router_id = router_id or f"{socket.gethostname()}-{os.getpid()}"
        self._client = client
        self._interval = interval_s
        self.sent = 0

    async def send_once(self) -> bool:
        figures = self.book.report()
        if not figures:
            return True
        body = {"router": self.router_id, "boot": self.book.boot, "figures": figures}
        if not await self._client.post("/v1/figures", body, "the version figures"):
            return False
        self.sent += 1
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.send_once()
            except Exception as exc:  # keep reporting: the next period may work
                log.warning("reporting figures failed: %s", exc)
