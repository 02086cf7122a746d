"""Where is the client? From a trusted edge header, a GeoIP database, or a default.

The edge header (``x-meridian-client-location: LAT,LON``) is believed only when the
connection comes from a configured trusted proxy address, so end users cannot
steer themselves. A MaxMind-format database (GeoLite2-City or compatible) maps
the client address to coordinates when configured.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClientLocator", "Location", "parse_location"]

EDGE_HEADER = b"x-meridian-client-location"


@dataclass(frozen=True, slots=True)
class Location:
    lat: float
    lon: float
    source: str  # header | geoip | default


def parse_location(raw: str) -> tuple[float, float] | None:
    """``"LAT,LON"`` → (lat, lon), or None when malformed or out of range."""
    try:
        lat_s, lon_s = raw.split(",", 1)
        lat, lon = float(lat_s), float(lon_s)
    except ValueError:
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon


class ClientLocator:
    def __init__(
        self,
        default: tuple[float, float],
        trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128"),
        geoip_path: str | None = None,
    ) -> None:
        self._default = Location(default[0], default[1], "default")
        self._trusted = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_proxies)
        self._reader: Any = None
        self._trust_cache: dict[str, bool] = {}
        self._header_cache: dict[bytes, Location | None] = {}  # edge header -> its location
        if geoip_path:
            import maxminddb

            if not Path(geoip_path).exists():
                raise FileNotFoundError(f"GeoIP database not found: {geoip_path}")
            self._reader = maxminddb.open_database(geoip_path)

    def _trusted_peer(self, host: str) -> bool:
        known = self._trust_cache.get(host)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        trusted = any(addr in net for net in self._trusted)
        if len(self._trust_cache) >= 65536:
            self._trust_cache.clear()
        self._trust_cache[host] = trusted
        return trusted

    def locate(self, client_host: str, edge_header: bytes | None) -> Location:
        if edge_header is not None and self._trusted_peer(client_host):
            try:
                located = self._header_cache[edge_header]
            except KeyError:
                located = self._from_header(edge_header)
            if located is not None:
                return located
        if self._reader is not None:
            try:
                record = self._reader.get(client_host)
            except ValueError:
                record = None
            loc = (record or {}).get("location") if isinstance(record, dict) else None
            if loc and "latitude" in loc and "longitude" in loc:
                return Location(float(loc["latitude"]), float(loc["longitude"]), "geoip")
        return self._default

    def _from_header(self, edge_header: bytes) -> Location | None:
        parsed = parse_location(edge_header.decode("latin-1"))
        located = None if parsed is None else Location(parsed[0], parsed[1], "header")
        if len(edge_header) <= 64:  # the same locations recur: remember short values, bounded
            if len(self._header_cache) >= 65536:
                self._header_cache.clear()
            self._header_cache[edge_header] = located
        return located

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
