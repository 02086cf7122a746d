"""The rollout's pure parts: gates, wave planning, weights, windows, figures, drift."""

from __future__ import annotations

import orjson
import pytest

from control_plane.rollouts.gates import RegionWindow, judge
from control_plane.rollouts.plan import RegionSize, continent, default_waves, split_weight
from control_plane.rollouts.schemas import GateConfig
from control_plane.rollouts.window import FigureLedger, RouterReport, Window, parse_report
from meridian.figures import BUCKETS_MS, VersionFigures, bucket_of, quantile_ms
from router.mirror import output_distance

GATES = GateConfig(min_requests=50, min_mirrored=20, max_p99_ratio=1.5, p99_slack_ms=10)


def figures(n: int, errors: int = 0, ms: float = 20.0, mirrored: int = 0,
            drift: float = 0.0) -> VersionFigures:  # fmt: skip
    f = VersionFigures()
    for i in range(n):
        if i < errors:
            f.failed()
        else:
            f.answered(ms)
    for _ in range(mirrored):
        f.compared(drift)
    return f


def window(new: VersionFigures, old: VersionFigures, *, elapsed: float = 10.0,
           share: float = 0.1, compare: str = "none",
           reference: VersionFigures | None = None) -> RegionWindow:  # fmt: skip
    return RegionWindow("r", new, old, elapsed, share, reference, compare)


def test_no_verdict_before_enough_requests_even_if_all_failed() -> None:
    v = judge(GATES, window(figures(10, errors=10), figures(500)), bake_s=1)
    assert v.outcome == "wait" and "10 of 50 requests" in v.reasons[0]


def test_a_good_version_passes_once_baked() -> None:
    assert judge(GATES, window(figures(60), figures(500), elapsed=0.5), bake_s=2).outcome == "wait"
    assert judge(GATES, window(figures(60), figures(500), elapsed=2.5), bake_s=2).outcome == "pass"


def test_error_rate_is_judged_against_the_old_version_in_the_same_window() -> None:
    old = figures(500, errors=50)  # the old version fails 10% too: the region is bad
    assert judge(GATES, window(figures(100, errors=10), old), bake_s=1).outcome == "pass"
    v = judge(GATES, window(figures(100, errors=20), figures(500)), bake_s=1)
    assert v.outcome == "fail" and "error rate 20.00%" in v.reasons[0]


def test_latency_p99_relative_and_absolute() -> None:
    slow = judge(GATES, window(figures(100, ms=100.0), figures(500, ms=20.0)), bake_s=1)
    assert slow.outcome == "fail" and "latency p99" in slow.reasons[0]
    near = judge(GATES, window(figures(100, ms=25.0), figures(500, ms=20.0)), bake_s=1)
    assert near.outcome == "pass"  # within the slack
    capped = GATES.model_copy(update={"max_p99_ms": 15.0})
    assert judge(capped, window(figures(100, ms=20.0), figures(500, ms=20.0)), bake_s=1
                 ).outcome == "fail"  # fmt: skip


def test_at_full_share_the_old_versions_earlier_window_is_the_reference() -> None:
    reference = figures(500, ms=20.0)
    v = judge(GATES, window(figures(100, ms=100.0), figures(3), share=1.0, reference=reference),
              bake_s=1)  # fmt: skip
    assert v.outcome == "fail" and v.figures["old_from"] == "earlier window"


def test_output_drift_on_mirrored_requests() -> None:
    same = window(figures(100, mirrored=30, drift=0.0), figures(500), compare="cosine")
    assert judge(GATES, same, bake_s=1).outcome == "pass"
    other = window(figures(100, mirrored=30, drift=0.9), figures(500), compare="cosine")
    v = judge(GATES, other, bake_s=1)
    assert v.outcome == "fail" and "output drift" in v.reasons[0]
    few = window(figures(100, mirrored=5, drift=0.9), figures(500), compare="cosine")
    assert judge(GATES, few, bake_s=1).outcome == "wait"
    full = window(figures(100), figures(0), compare="cosine", share=1.0)
    assert judge(GATES, full, bake_s=1).outcome == "pass"  # nothing left to mirror


def test_time_to_first_token() -> None:
    new, old = figures(100), figures(500)
    for _ in range(100):
        new.first_token(400.0)
    for _ in range(500):
        old.first_token(100.0)
    v = judge(GATES, window(new, old), bake_s=1)
    assert v.outcome == "fail" and "time to first token" in v.reasons[0]


def test_default_waves_smallest_first_then_by_continent_largest_last() -> None:
    regions = [
        RegionSize("us-east", 39.0, -77.5, 16), RegionSize("us-west", 45.6, -121.2, 8),
        RegionSize("eu-west", 53.3, -6.3, 4), RegionSize("eu-central", 50.1, 8.7, 8),
        RegionSize("ap-ne", 35.7, 139.7, 6), RegionSize("sa-east", -23.6, -46.6, 2),
    ]  # fmt: skip
    assert default_waves(regions) == [
        ["sa-east"], ["ap-ne"], ["eu-west", "eu-central"], ["us-west", "us-east"],
    ]  # fmt: skip
    assert continent(-33.9, 151.2) == "oceania" and continent(19.1, 72.9) == "asia"
    assert default_waves([]) == []


def test_split_weight() -> None:
    assert split_weight(1.0, 0.1) == (0.9, 0.1)
    assert split_weight(4.0, 1.0) == (0.0, 4.0)
    assert split_weight(0.0, 0.5) == (0.5, 0.5)


def test_histograms_quantiles_and_wire_form() -> None:
    assert bucket_of(0.1) == 0 and bucket_of(1e9) == len(BUCKETS_MS) - 1
    f = figures(99, ms=10.0)
    f.answered(1000.0)
    assert quantile_ms(f.latency, 0.5) == pytest.approx(10.0)
    assert quantile_ms(f.latency, 0.999) == pytest.approx(1000.0)
    assert quantile_ms(VersionFigures().latency, 0.99) is None
    again = VersionFigures.from_dict(orjson.loads(orjson.dumps(f.to_dict())))
    assert again == f


def report(router: str, boot: str, n: int) -> RouterReport:
    return RouterReport(router, boot, {("m", "2", "r"): figures(n)})


def test_a_window_counts_since_it_opened_router_by_router() -> None:
    ledger = FigureLedger()
    ledger.update([report("a", "x", 100), report("b", "y", 50)])
    w = Window.opening(ledger)
    ledger.update([report("a", "x", 130), report("b", "z", 7), report("c", "w", 5)])
    # a: 30 since; b restarted: all 7 of its new boot; c is new: all 5
    assert w.figures(ledger, ("m", "2", "r")).requests == 42
    assert w.figures(ledger, ("m", "1", "r")).requests == 0


def test_parse_report() -> None:
    raw = orjson.dumps({"router": "a", "boot": "b", "figures": [
        {"model": "m", "version": "2", "region": "r", **figures(3).to_dict()}]})  # fmt: skip
    parsed = parse_report(raw)
    assert parsed is not None and parsed.figures[("m", "2", "r")].requests == 3
    assert parse_report(b"{") is None and parse_report(b'{"router": 1}') is None


def reply(values: list[object]) -> bytes:
    return orjson.dumps({"outputs": [{"name": "y", "data": values}]})


def test_output_distance() -> None:
    assert output_distance("cosine", reply([1.0, 0.0]), reply([2.0, 0.0])) == pytest.approx(0.0)
    assert output_distance("cosine", reply([1.0, 0.0]), reply([0.0, 1.0])) == pytest.approx(1.0)
    assert output_distance("cosine", reply([[1.0, 0.0]]), reply([[-1.0, 0.0]])) == pytest.approx(2)
    assert output_distance("cosine", reply([1.0]), reply([1.0, 2.0])) is None
    assert output_distance("cosine", b"not json", reply([1.0])) is None
    assert output_distance("disagreement", reply([0.1, 0.9]), reply([0.2, 0.8])) == 0.0
    assert output_distance("disagreement", reply([0.1, 0.9]), reply([0.9, 0.1])) == 1.0
    assert output_distance("disagreement", reply(["cat"]), reply(["dog"])) == 1.0


def test_the_version_an_attempt_is_counted_for() -> None:
    from meridian.snapshot import HealthState, WorkerView
    from router.figures import FigureBook, served_version

    one = WorkerView("w", "http://127.0.0.1:1", HealthState.HEALTHY, ("m:1", "other:3"))
    two = WorkerView("w", "http://127.0.0.1:1", HealthState.HEALTHY, ("m:1", "m:2"))
    assert served_version("/v2/models/m/versions/2/infer", one, "m") == "2"
    assert served_version("/v2/models/m/infer", one, "m") == "1"
    assert served_version("/v2/models/m/infer", two, "m") == ""
    book = FigureBook()
    book.of("m", "1", "r").answered(12.0)
    book.of("m", "1", "r").failed()
    (row,) = book.report()
    assert (row["model"], row["version"], row["region"], row["requests"], row["errors"]) == (
        "m", "1", "r", 2, 1)  # fmt: skip
