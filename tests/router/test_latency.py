"""The latency model: great-circle distance and the fitted RTT constants."""

from __future__ import annotations

import pytest

from router.latency import FITTED, great_circle_km
from router.latency_fit import (
    WONDERPROXY,
    default_data_dir,
    evaluate,
    fit,
    load_aws,
    load_azure,
    load_fitted,
    load_wonderproxy,
)


def test_great_circle_distance_matches_known_city_pairs() -> None:
    # London - New York is about 5,570 km; a quarter meridian about 10,008 km
    assert great_circle_km(51.5074, -0.1278, 40.7128, -74.0060) == pytest.approx(5570, rel=0.01)
    assert great_circle_km(0, 0, 90, 0) == pytest.approx(10007.5, rel=0.001)
    assert great_circle_km(10, 20, 10, 20) == 0.0


def test_fitted_model_is_monotonic_and_physical() -> None:
    values = [FITTED.rtt_ms(km) for km in (0, 100, 1000, 2000, 5000, 10000, 20000)]
    assert values == sorted(values)
    assert 0 < FITTED.base_ms < 20
    # long-haul RTT cannot beat light in fibre (0.01 ms per km of distance)
    assert 1.0 < FITTED.route_inflation() < 3.0
    # Singapore - Sydney is ~6,300 km; cloudping p50 is ~95 ms, WonderProxy ~94 ms
    assert FITTED.rtt_ms(6306) == pytest.approx(95, rel=0.35)
    # London - Paris, 344 km: ~11 ms measured
    assert FITTED.rtt_ms(344) == pytest.approx(11, abs=6)


def test_the_embedded_model_holds_on_the_held_out_matrices() -> None:
    """The AWS and Azure matrices the model was not fitted on (shipped with the simulator)."""
    assert load_fitted() == FITTED  # the shipped record of the fit is what the router embeds
    for pairs, pairs_count in ((load_aws(), 992), (load_azure(), 2350)):
        held_out = evaluate(FITTED, pairs)
        assert held_out.n == pairs_count
        assert held_out.mae_ms < 40 and held_out.r2 > 0.6, pairs.name
        # distance overestimates straight cloud backbones, but by well under 20 ms at the median
        assert 0 < held_out.median_signed_ms < 20, pairs.name


def test_refit_from_the_ping_data_reproduces_the_embedded_constants() -> None:
    data = default_data_dir()
    if not (data / WONDERPROXY).is_dir():
        # the pings state no licence, so only the constants fitted to them are shipped
        pytest.skip(f"no WonderProxy pings at {data / WONDERPROXY} (set MERIDIAN_DATA)")
    pings = load_wonderproxy(data)
    model = fit(pings, knees=(FITTED.knee_km,))
    assert model.base_ms == pytest.approx(FITTED.base_ms, abs=0.5)
    assert model.far_ms_per_km == pytest.approx(FITTED.far_ms_per_km, rel=0.02)
    held_out = evaluate(FITTED, load_aws(data))
    assert held_out.mae_ms < 40 and held_out.r2 > 0.6
