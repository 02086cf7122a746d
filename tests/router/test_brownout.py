"""The brownout strategy on plain data: when a saturated region's overflow goes to its
``degrade_to`` variant, and the ledger's hysteresis."""

from __future__ import annotations

import random
import time

from meridian.snapshot import DeploymentRoute, HealthState, RegionView, RoutingSnapshot, WorkerView
from router.brownout import BrownoutConfig, BrownoutLedger, BrownoutPolicy, label_variant
from router.policies import serving_workers

H = HealthState.HEALTHY


def _snap(
    *, degrade_to: str = "int8", base_held: int = 0, reserve_held: int = 0
) -> RoutingSnapshot:
    # base: 20 requests/s at 100 ms = 2 requests in service without queueing; int8: 4
    base = WorkerView("b", "http://127.0.0.1:1", H, ("m:1",), in_flight=base_held,
                      capacity_rps=20.0, latency_p50_ms=100.0)  # fmt: skip
    reserve = WorkerView("r", "http://127.0.0.1:2", H, ("m:1:int8",), in_flight=reserve_held,
                         capacity_rps=80.0, latency_p50_ms=50.0)  # fmt: skip
    region = RegionView("eu", H, 50.0, 8.0, capacity_rps=100.0, workers=(base, reserve))
    deps = (DeploymentRoute("m", "1", "eu", degrade_to=degrade_to),)
    return RoutingSnapshot(version=1, generated_at=time.time(), regions=(region,), deployments=deps)


def _decide(snap: RoutingSnapshot, outstanding: dict[str, int], max_load: float = 1.0):  # type: ignore[no-untyped-def]
    policy = BrownoutPolicy(BrownoutConfig(max_load=max_load))
    region = snap.regions[0]
    base = serving_workers(region, "m")
    return policy.decide(snap, region, "m", None, base, outstanding, random.Random(0))


def test_reserve_workers_are_not_base_workers() -> None:
    region = _snap().regions[0]
    assert [w.worker_id for w in serving_workers(region, "m")] == ["b"]
    assert region.serves("m")
    assert label_variant("m:1:int8") == "int8" and label_variant("m:1") == ""


def test_overflow_only_once_the_base_is_saturated() -> None:
    snap = _snap()
    assert _decide(snap, {"b": 1}) is None  # half busy: stays on the base
    overflow = _decide(snap, {"b": 2})  # both slots busy: load 1
    assert overflow is not None
    assert overflow.variant == "int8" and overflow.worker.worker_id == "r"
    assert overflow.load == 1.0
    # the worker's own report counts as well (other routers' requests)
    assert _decide(_snap(base_held=3), {}) is not None


def test_no_overflow_when_off_undeclared_or_the_variant_is_as_full() -> None:
    assert _decide(_snap(), {"b": 5}, max_load=0.0) is None  # brownout off
    assert _decide(_snap(degrade_to=""), {"b": 5}) is None  # no degrade_to declared
    assert _decide(_snap(degrade_to="fp16"), {"b": 5}) is None  # no worker of that variant
    # base at load 2 (4 held / 2), reserve at 8 held / 4 = 2: nothing gained by moving
    assert _decide(_snap(), {"b": 4, "r": 8}) is None
    assert _decide(_snap(), {"b": 4, "r": 7}) is not None


def test_a_requested_version_only_overflows_to_its_own_variant() -> None:
    snap = _snap()
    policy = BrownoutPolicy(BrownoutConfig(max_load=1.0))
    region = snap.regions[0]
    base = serving_workers(region, "m")
    rng = random.Random(0)
    assert policy.decide(snap, region, "m", "2", base, {"b": 3}, rng) is None
    assert policy.decide(snap, region, "m", "1", base, {"b": 3}, rng) is not None


def test_ledger_holds_a_region_in_brownout_then_lets_it_go() -> None:
    overflow = _decide(_snap(), {"b": 2})
    assert overflow is not None
    ledger = BrownoutLedger(hold_s=5.0)
    ledger.overflowed("eu", "m", overflow, now=100.0)
    ledger.overflowed("eu", "m", overflow, now=102.0)
    assert ledger.served[("m", "int8")] == 2
    entered = ledger.transitions(102.0)
    assert [(t.region, t.model, t.variant, t.entered) for t in entered] == [
        ("eu", "m", "int8", True)
    ]
    assert ledger.active(106.9) == {("eu", "m"): "int8"}  # within the hold of the last one
    assert ledger.transitions(106.9) == []
    assert ledger.active(107.0) == {}
    left = ledger.transitions(107.0)
    assert [(t.region, t.entered) for t in left] == [("eu", False)]
    text = b"".join(
        str(m).encode() for m in ledger.families(107.0)
    )  # families render; the gauge is empty now
    assert b"meridian_router_brownout" in text
