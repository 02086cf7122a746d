"""Routing policies: pure strategy objects over (snapshot, router stats, request)."""

from router.policies.base import FleetTable, RouteRequest, RoutingPolicy
from router.policies.baselines import NearestPolicy, OraclePolicy, RoundRobinPolicy, WaterfallPolicy
from router.policies.meridian import MeridianPolicy, expected_wait_ms
from router.policies.selection import VersionPicker, pick_worker
from router.policies.stats import RegionStats, RouterStats, StatsConfig

__all__ = [
    "FleetTable",
    "MeridianPolicy",
    "NearestPolicy",
    "OraclePolicy",
    "RegionStats",
    "RoundRobinPolicy",
    "RouteRequest",
    "RouterStats",
    "RoutingPolicy",
    "StatsConfig",
    "VersionPicker",
    "WaterfallPolicy",
    "expected_wait_ms",
    "pick_worker",
]
