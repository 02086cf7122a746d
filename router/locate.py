"""Where is the client? From a trusted edge header, a GeoIP database, or a default.

The edge header (``x-meridian-client-location: LAT,LON``) is believed only when the
connection comes from a configured trusted proxy address, so end users cannot
steer themselves. Behind a trusted load balancer the client's address is taken
from ``X-Forwarded-For`` (the rightmost address in the chain that is not a trusted
proxy); from any other peer the header is ignored and the peer's own address is
used. A MaxMind-format database (GeoLite2-City or compatible) maps that address
to coordinates when configured.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EDGE_HEADER",
    "FORWARDED_FOR",
    "ClientLocator",
    "Location",
    "parse_address",
    "parse_location",
]

EDGE_HEADER = b"x-meridian-client-location"
FORWARDED_FOR = b"x-forwarded-for"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def parse_address(raw: str) -> IPAddress | None:
    """One address as a peer or an ``X-Forwarded-For`` entry writes it, or None.

    Accepts ``1.2.3.4``, ``1.2.3.4:5678``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:5678``; an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``, what a
    dual-stack socket reports for an IPv4 peer) becomes the IPv4 address.
    """
    text = raw.strip()
    port = ""
    if text.startswith("["):
        text, sep, port = text[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            return None
        port = port[1:] if port else ""
    elif text.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        text, _, port = text.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


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

            if not Path(geoip_path).is_file():
                raise FileNotFoundError(f"GeoIP database not found: {geoip_path}")
            self._reader = maxminddb.open_database(geoip_path)

    def _trusted_host(self, host: str) -> bool:
        known = self._trust_cache.get(host)
        if known is not None:
            return known
        addr = parse_address(host)
        trusted = addr is not None and any(addr in net for net in self._trusted)
        if len(self._trust_cache) >= 65536:
            self._trust_cache.clear()
        self._trust_cache[host] = trusted
        return trusted

    def client_address(
        self, client_host: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> IPAddress | None:
        """The client's address: the peer's own, or, when the peer is a trusted proxy,
        the rightmost ``X-Forwarded-For`` entry that is not itself a trusted proxy.

        Every ``X-Forwarded-For`` line counts, in order, as one comma-separated chain.
        Only the entries right of the first untrusted one were written by trusted
        proxies; anything further left is whatever the client sent. A malformed entry
        met on the way ends the walk and the peer's own address is used; a chain of
        trusted proxies only gives its leftmost entry.
        """
        peer = parse_address(client_host)
        if peer is None or not self._trusted_host(client_host):
            return peer
        chain = b",".join(v for k, v in headers if k == FORWARDED_FOR)
        if not chain:
            return peer
        client = peer
        for entry in reversed(chain.decode("latin-1").split(",")):
            if not entry.strip():
                continue  # an empty list element, allowed by the list syntax
            addr = parse_address(entry)
            if addr is None:
                return peer
            client = addr
            if not any(addr in net for net in self._trusted):
                break
        return client

    def locate(
        self,
        client_host: str,
        edge_header: bytes | None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> Location:
        """``headers`` (lower-cased names) is read for ``X-Forwarded-For`` only."""
        if edge_header is not None and self._trusted_host(client_host):
            try:
                located = self._header_cache[edge_header]
            except KeyError:
                located = self._from_header(edge_header)
            if located is not None:
                return located
        if self._reader is not None:
            addr = self.client_address(client_host, headers)
            try:
                record = self._reader.get(addr) if addr is not None else None
            except ValueError:  # an IPv6 address and an IPv4-only database
                record = None
            loc = record.get("location") if isinstance(record, dict) else None
            if isinstance(loc, dict) and "latitude" in loc and "longitude" in loc:
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
