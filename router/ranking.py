"""Routing policies by name, for the router process."""

from __future__ import annotations

from router.policies import (
    MeridianPolicy,
    NearestPolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    WaterfallPolicy,
)

__all__ = ["POLICIES", "REPLICA_SPREAD_MS", "make_policy"]

POLICIES: dict[str, type[RoutingPolicy]] = {
    "meridian": MeridianPolicy,
    "nearest": NearestPolicy,
    "waterfall": WaterfallPolicy,
    "round-robin": RoundRobinPolicy,
}


# The router recomputes a region's queueing charge at most this often (its stats move on
# every request); RTTs are per client and always exact. The simulator uses the same knob.
ROUTER_REFRESH_S = 0.005


# What a router running as one of several replicas should use for ``spread_ms`` (the
# simulator's figure): requests go to regions up to 20 ms worse than the best, weighted
# by free servers, so replicas acting on the same snapshot split a burst.
REPLICA_SPREAD_MS = 20.0


def make_policy(name: str, spread_ms: float = 0.0) -> RoutingPolicy:
    """The named policy; ``spread_ms`` (Meridian's only): choose at random among the regions
    within that many ms of the best, weighted by free servers (0: always the best)."""
    if spread_ms < 0:
        raise ValueError("spread_ms cannot be negative")
    if name == "meridian":
        return MeridianPolicy(refresh_s=ROUTER_REFRESH_S, spread_ms=spread_ms)
    try:
        return POLICIES[name]()
    except KeyError:
        known = ", ".join(POLICIES)
        raise SystemExit(f"unknown routing policy '{name}' (known: {known})") from None
