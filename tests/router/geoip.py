"""Small GeoLite2-City-shaped MaxMind databases for tests, written with mmdb-writer."""

from __future__ import annotations

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# name → (lat, lon): a few real cities, far enough apart to tell which region is nearest
CITIES: dict[str, tuple[float, float]] = {
    "Frankfurt": (50.11, 8.68),
    "Sydney": (-33.87, 151.21),
    "Sao Paulo": (-23.55, -46.63),
    "Tokyo": (35.68, 139.69),
}


def city_record(name: str) -> dict[str, object]:
    """The part of a GeoLite2-City record the router reads, plus its neighbours."""
    lat, lon = CITIES[name]
    return {
        "city": {"names": {"en": name}},
        "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20},
    }


def write_city_db(path: Path, networks: dict[str, str]) -> Path:
    """Write an IPv6 database (IPv4 networks under ``::/96``, as GeoLite2 does) mapping
    each CIDR network to a city of ``CITIES``; returns ``path``."""
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoLite2-City",
        languages=["en"],
        description="Meridian test cities",
    )
    for cidr, city in networks.items():
        writer.insert_network(IPSet([cidr]), city_record(city))
    writer.to_db_file(str(path))
    return path
