"""Routing policies by name, for the router process."""

from __future__ import annotations

from router.policies import (
    MeridianPolicy,
    NearestPolicy,
    RoundRobinPolicy,
    RoutingPolicy,
    WaterfallPolicy,
)

__all__ = ["POLICIES", "make_policy"]

POLICIES: dict[str, type[RoutingPolicy]] = {
    "meridian": MeridianPolicy,
    "nearest": NearestPolicy,
    "waterfall": WaterfallPolicy,
    "round-robin": RoundRobinPolicy,
}


# The router recomputes a region's queueing charge at most this often (its stats move on
# every request); RTTs are per client and always exact. The simulator uses the same knob.
ROUTER_REFRESH_S = 0.005


def make_policy(name: str) -> RoutingPolicy:
    if name == "meridian":
        return MeridianPolicy(refresh_s=ROUTER_REFRESH_S)
    try:
        return POLICIES[name]()
    except KeyError:
        known = ", ".join(POLICIES)
        raise SystemExit(f"unknown routing policy '{name}' (known: {known})") from None
