"""The routers' reports, summed, and the windows of canary steps over them.

Routers report cumulative figures (``meridian.figures``) through any control-plane replica
into the coordination backend, one key per router. :class:`FigureLedger` holds the latest
report of each; a :class:`Window` remembers the ledger when a step began and gives what
happened since, router by router (a router that restarted counts from its restart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from meridian.figures import FigureKey, VersionFigures

__all__ = ["FigureLedger", "RouterReport", "Window", "parse_report"]


@dataclass(frozen=True, slots=True)
class RouterReport:
    router: str
    boot: str
    figures: dict[FigureKey, VersionFigures]
    at: float = 0.0  # wall-clock seconds when a control plane took it


def parse_report(raw: bytes) -> RouterReport | None:
    try:
        data: dict[str, Any] = orjson.loads(raw)
        figures = {
            (str(row["model"]), str(row["version"]), str(row["region"])): VersionFigures.from_dict(
                row
            )
            for row in data["figures"]
        }
        at = float(data.get("at", 0.0))
        return RouterReport(str(data["router"]), str(data["boot"]), figures, at)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass
class FigureLedger:
    reports: dict[str, RouterReport] = field(default_factory=dict)

    def update(self, reports: Iterable[RouterReport]) -> None:
        for report in reports:
            self.reports[report.router] = report


@dataclass
class Window:
    """Figures since the ledger looked like ``start``."""

    start: dict[str, RouterReport]

    @classmethod
    def opening(cls, ledger: FigureLedger) -> Window:
        return cls(dict(ledger.reports))

    def figures(self, ledger: FigureLedger, key: FigureKey) -> VersionFigures:
        total = VersionFigures()
        for router, report in ledger.reports.items():
            now = report.figures.get(key)
            if now is None:
                continue
            before = self.start.get(router)
            earlier = before.figures.get(key) if before and before.boot == report.boot else None
            if earlier is not None and now.covers(earlier):
                total.add(now.minus(earlier))
            else:
                total.add(now)
        return total
