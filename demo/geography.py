"""Where the demo's regions and clients are.

Region coordinates: AWS region locations as listed in oaustegard/oaustegard.github.io
``web-utilities/aws-ping.html`` (see shared data SOURCES.md). City coordinates:
Natural Earth populated places (public domain).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CITIES", "REGIONS", "City", "RegionSite"]


@dataclass(frozen=True, slots=True)
class RegionSite:
    name: str
    city: str
    lat: float
    lon: float
    gpu_type: str = "L4"
    gpus: int = 2


@dataclass(frozen=True, slots=True)
class City:
    name: str
    lat: float
    lon: float


REGIONS: tuple[RegionSite, ...] = (
    RegionSite("us-east-1", "Ashburn", 39.0458, -77.4874),
    RegionSite("eu-central-1", "Frankfurt", 50.1109, 8.6821),
    RegionSite("ap-northeast-1", "Tokyo", 35.6762, 139.6503),
    RegionSite("sa-east-1", "Sao Paulo", -23.5558, -46.6396),
)

CITIES: tuple[City, ...] = (
    City("New York", 40.7494, -73.9819),
    City("London", 51.5000, -0.1167),
    City("Berlin", 52.5218, 13.4015),
    City("Tokyo", 35.6850, 139.7514),
    City("Mumbai", 19.0170, 72.8570),
    City("Sao Paulo", -23.5587, -46.6250),
    City("Sydney", -33.9200, 151.1852),
)
