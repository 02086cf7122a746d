"""Client-to-region round-trip time from great-circle distance.

The router needs ``rtt(client, region)`` for every candidate region on every
request. Where the router has measured a region's RTT from a client's network it
uses that; otherwise it falls back to :class:`LatencyModel`, a piecewise-linear
function of great-circle distance fitted to real pings (see
``python3 -m router.latency_fit`` and docs/latency-model.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "EARTH_RADIUS_KM",
    "FITTED",
    "LatencyModel",
    "great_circle_km",
    "great_circle_km_array",
]

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius

FloatArray = npt.NDArray[np.float64]


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km between two points given in degrees."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def great_circle_km_array(
    lat1: FloatArray | float,
    lon1: FloatArray | float,
    lat2: FloatArray | float,
    lon2: FloatArray | float,
) -> FloatArray:
    """Vectorised haversine in km; arguments in degrees broadcast against each other."""
    p1 = np.radians(lat1)
    p2 = np.radians(lat2)
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    out: FloatArray = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(h)))
    return out


@dataclass(frozen=True, slots=True)
class LatencyModel:
    """``rtt_ms = base + near·min(km, knee) + far·max(km - knee, 0)``.

    Two slopes because short paths are dominated by metro and access-network
    detours (high ms per km) while long paths ride long-haul fibre, whose RTT
    approaches the 0.01 ms/km of light in glass times a route-inflation factor.
    """

    base_ms: float
    near_ms_per_km: float
    far_ms_per_km: float
    knee_km: float

    def rtt_ms(self, km: float) -> float:
        near = km if km < self.knee_km else self.knee_km
        far = km - self.knee_km if km > self.knee_km else 0.0
        return self.base_ms + self.near_ms_per_km * near + self.far_ms_per_km * far

    def rtt_ms_array(self, km: FloatArray) -> FloatArray:
        near = np.minimum(km, self.knee_km)
        far = np.maximum(km - self.knee_km, 0.0)
        out: FloatArray = self.base_ms + self.near_ms_per_km * near + self.far_ms_per_km * far
        return out

    def route_inflation(self) -> float:
        """Long-haul RTT per km relative to light in fibre (0.01 ms of RTT per km)."""
        return self.far_ms_per_km / 0.01


# Fitted by `python3 -m router.latency_fit` (least absolute deviations) to the WonderProxy
# city-to-city pings of 2020-07-19/20 (sm86/geo-latency-data, "A day in the life of the
# Internet": 59,887 directed city pairs, mean of `ping -c 30` repeated hourly).
# Error on those pairs, on the AWS cloudping matrix and on the Azure matrix: docs/latency-model.md.
FITTED = LatencyModel(base_ms=7.829, near_ms_per_km=0.02194, far_ms_per_km=0.01638, knee_km=2000.0)
