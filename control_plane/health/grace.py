"""The reconnect grace: a leader that has just arrived does not yet know who is alive.

A replica that starts leading (or gets the coordination store back) sees only the
regions whose agents have reported to some replica since: after an outage of the
whole control plane that is none of them, as the summaries' leases ran out while
nobody renewed them. Published as they are, those missing summaries would take
every region out of routing although the agents (and their workers) are fine and
are reconnecting, with backoff, right now.

So for ``grace_s`` after such a start, a region with no summary keeps the view it
had in the last snapshot published (by this leader or the previous one); a region
whose agent has reported meanwhile is published as reported. When the grace ends,
a region still silent is published as what it is: gone (``down``).

A plain object over a clock passed in (``time.monotonic`` seconds).
"""

from __future__ import annotations

from collections.abc import Mapping

from meridian.snapshot import RegionView, RoutingSnapshot

__all__ = ["ReconnectGrace"]


class ReconnectGrace:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.until = float("-inf")
        self._regions: dict[str, RegionView] = {}
        self.started = 0  # how many graces began (for status pages and tests)

    def begin(self, now: float, previous: RoutingSnapshot | None) -> None:
        """A term began or the store came back: keep ``previous``'s regions for a while."""
        if self.grace_s <= 0:
            return
        self.until = now + self.grace_s
        self._regions = {r.name: r for r in previous.regions} if previous is not None else {}
        self.started += 1

    def active(self, now: float) -> bool:
        return now < self.until

    def left_s(self, now: float) -> float:
        return max(0.0, self.until - now)

    def carried(self, now: float) -> Mapping[str, RegionView]:
        """The regions to keep for those with no summary: empty once the grace is over."""
        if now >= self.until:
            self._regions = {}
            return {}
        return self._regions
