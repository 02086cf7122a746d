"""Regions whose agent is lost: the control channel is not the data plane.

When a region's agent stops reporting (it crashed, or its link to the control plane
did), the control plane publishes the region down, marked ``unmonitored_since``: it
has no evidence that the workers died, only no news. Moving all of the region's
traffic across an ocean for that is worse than the risk, so for ``grace_s`` after
the agent went silent the router keeps routing to the region on its last monitored
view of it. Its own observations still decide which workers get requests: a worker
that refuses connections is ejected at once, a slow one is passed over
(``router.outliers``), a failing region's breaker opens. Past the grace, or once the
control plane publishes the region in any other state, the snapshot is believed.

A plain object over a wall clock passed in (``unmonitored_since`` is wall-clock time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

from meridian.snapshot import HealthState, RegionView, RoutingSnapshot

__all__ = ["UnmonitoredRegions"]

log = logging.getLogger(__name__)


class UnmonitoredRegions:
    def __init__(self, grace_s: float, clock: Callable[[], float] = time.time) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._monitored: dict[str, RegionView] = {}  # last routable view of each region
        self._seen: RoutingSnapshot | None = None
        self._out: RoutingSnapshot | None = None
        self._checked = 0.0
        self.held: set[str] = set()  # regions routed on their last monitored view now

    def view(self, snap: RoutingSnapshot) -> RoutingSnapshot:
        """``snap`` with each unmonitored region in its grace as last monitored."""
        now = self._clock()
        if snap is self._seen and self._out is not None and now - self._checked < 1.0:
            return self._out
        self._seen, self._checked = snap, now
        regions: list[RegionView] = []
        held: set[str] = set()
        for region in snap.regions:
            if region.state.routable and not region.unmonitored_since:
                self._monitored[region.name] = region
            elif self._in_grace(region, now) and region.name in self._monitored:
                kept = self._monitored[region.name]
                region = replace(kept, unmonitored_since=region.unmonitored_since)
                held.add(region.name)
            elif not region.state.routable:
                self._monitored.pop(region.name, None)
            regions.append(region)
        for name in held - self.held:
            log.warning("region %s is unmonitored (no agent reports): routing it on its last "
                        "monitored view and the router's own observations", name)  # fmt: skip
        for name in self.held - held:
            log.info("region %s: routed on the current snapshot again", name)
        self.held = held
        self._out = replace(snap, regions=tuple(regions), _by_name={}) if held else snap
        return self._out

    def _in_grace(self, region: RegionView, now: float) -> bool:
        since = region.unmonitored_since
        return region.state == HealthState.DOWN and since > 0 and now - since < self.grace_s
