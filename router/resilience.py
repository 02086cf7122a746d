"""Resilience policies of the router as plain objects: the retry budget (retries stay a
bounded fraction of traffic) and the last good view (a snapshot that takes a whole model
out of routing is not believed).

Plain objects over plain data (and a clock passed in, ``time.monotonic`` seconds), so
tests drive them with plain numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from meridian.snapshot import HealthState, RoutingSnapshot

__all__ = ["LastGoodView", "RetryBudget"]

log = logging.getLogger(__name__)


@dataclass
class RetryBudget:
    """Retries stay a bounded fraction of traffic so an outage cannot multiply the load.

    Every first attempt deposits ``ratio`` tokens (capped at ``cap``); every retry
    spends one. ``min_per_second`` tokens accrue regardless, so a quiet router can
    still retry.
    """

    ratio: float = 0.2
    min_per_second: float = 10.0
    cap: float = 100.0
    tokens: float = 10.0
    last: float = 0.0

    def _refill(self, now: float) -> None:
        if now > self.last:
            self.tokens = min(self.cap, self.tokens + (now - self.last) * self.min_per_second)
            self.last = now

    def record_request(self, now: float) -> None:
        self._refill(now)
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_retry(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LastGoodView:
    """Envoy's panic threshold, per model: a snapshot that would take every region of a
    model out of routing is not believed.

    A control plane that has just come back may publish before its agents have
    reconnected, and then every region looks down. When a new snapshot has all regions
    that serve a model (its deployments', and those that served it in the last good
    snapshot) ``down``, while the model is still deployed, requests for that model are
    routed on the last snapshot in which it had a routable region: the router's own
    breakers and ejections still keep it off workers that are really gone. Regions an
    operator drains, and models undeployed, are taken at their word.
    """

    def __init__(self) -> None:
        self._good: dict[str, RoutingSnapshot] = {}
        self._verdicts: dict[str, RoutingSnapshot] = {}
        self._snap: RoutingSnapshot | None = None
        self.held: set[str] = set()  # models routed on a last good snapshot right now
        self.panics = 0  # times a model started to be held

    def view(self, snap: RoutingSnapshot, model: str) -> RoutingSnapshot:
        """The snapshot to route ``model`` on: ``snap``, or the model's last good one."""
        if snap is not self._snap:
            self._snap = snap
            self._verdicts = {}
        chosen = self._verdicts.get(model)
        if chosen is None:
            chosen = self._verdicts[model] = self._judge(snap, model)
        return chosen

    def _judge(self, snap: RoutingSnapshot, model: str) -> RoutingSnapshot:
        if any(r.serves(model) for r in snap.routable_regions()):
            self._good[model] = snap
            self._release(model, snap)
            return snap
        good = self._good.get(model)
        if good is None or not _everything_down(snap, good, model):
            self._release(model, snap)
            return snap
        if model not in self.held:
            self.held.add(model)
            self.panics += 1
            log.warning(
                "snapshot v%d has every region of model %r down; routing it on v%d meanwhile",
                snap.version, model, good.version,
            )  # fmt: skip
        return good

    def _release(self, model: str, snap: RoutingSnapshot) -> None:
        if model in self.held:
            self.held.discard(model)
            log.info("snapshot v%d: model %r is routed on the current snapshot again",
                     snap.version, model)  # fmt: skip


def _everything_down(snap: RoutingSnapshot, good: RoutingSnapshot, model: str) -> bool:
    deployed = {d.region for d in snap.deployments if d.model == model}
    if not deployed and any(d.model == model for d in good.deployments):
        return False  # undeployed since: believe it
    homes = deployed | {r.name for r in good.regions if r.serves(model)}
    present = [r for r in (snap.region(name) for name in homes) if r is not None]
    return bool(present) and all(r.state == HealthState.DOWN for r in present)
