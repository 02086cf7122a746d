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


def make_policy(name: str) -> RoutingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        known = ", ".join(POLICIES)
        raise SystemExit(f"unknown routing policy '{name}' (known: {known})") from None
