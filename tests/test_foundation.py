"""The shared pieces: errors map consistently; the snapshot round-trips through JSON."""

from __future__ import annotations

import grpc

from meridian import errors
from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot, WorkerView


def test_every_error_has_a_grpc_code_and_a_4xx_or_5xx_status() -> None:
    for cls in errors.GRPC_CODES:
        assert 400 <= cls.status < 600
    assert errors.grpc_code_for(errors.NotFound("x")) == grpc.StatusCode.NOT_FOUND
    assert errors.grpc_code_for(ValueError("x")) == grpc.StatusCode.INTERNAL


def test_snapshot_round_trips_through_json() -> None:
    worker = WorkerView("w1", "http://127.0.0.1:1", HealthState.HEALTHY, ("mlp:1",), queue_depth=3)
    region = RegionView("eu", HealthState.DEGRADED, 50.1, 8.7, workers=(worker,), capacity_rps=10)
    snap = RoutingSnapshot(7, 1.5, (region,), (DeploymentRoute("mlp", "1", "eu", 0.5),))
    back = RoutingSnapshot.from_json(snap.to_json())
    assert back == snap
    assert back.region("eu") == region
    assert back.regions[0].serves("mlp") and not back.regions[0].serves("cnn")
    assert [r.name for r in back.routable_regions()] == ["eu"]
