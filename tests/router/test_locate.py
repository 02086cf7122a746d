"""ClientLocator against a real MaxMind database read by the real ``maxminddb`` reader,
and the router choosing a region from it over loopback sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import maxminddb
import pytest

from router.locate import ClientLocator, Location, parse_address
from router.policies import NearestPolicy
from router.server import RouterServer
from router.settings import RouterSettings
from tests.router.conftest import StandInWorker, snapshot_for
from tests.router.geoip import CITIES, write_city_db

DEFAULT = (1.0, 2.0)
SYDNEY = Location(*CITIES["Sydney"], "geoip")
SAO_PAULO = Location(*CITIES["Sao Paulo"], "geoip")
TOKYO = Location(*CITIES["Tokyo"], "geoip")
NOWHERE = Location(*DEFAULT, "default")


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_city_db(
        tmp_path_factory.mktemp("geoip") / "cities.mmdb",
        {"198.51.100.0/24": "Sydney", "203.0.113.0/24": "Sao Paulo", "2001:db8:1::/48": "Tokyo"},
    )


@pytest.fixture
def locator(city_db: Path) -> Iterator[ClientLocator]:
    loc = ClientLocator(DEFAULT, ("127.0.0.1/32", "::1/128", "10.0.0.0/8"), str(city_db))
    try:
        yield loc
    finally:
        loc.close()


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode()) for v in values]


def test_the_database_is_a_real_geolite2_city_shaped_mmdb(city_db: Path) -> None:
    with maxminddb.open_database(str(city_db)) as reader:
        assert reader.metadata().database_type == "GeoLite2-City"
        assert reader.metadata().ip_version == 6
        record = reader.get("198.51.100.7")
        assert isinstance(record, dict)
        assert record["city"] == {"names": {"en": "Sydney"}}
        assert record["location"]["latitude"] == CITIES["Sydney"][0]


# -- GeoIP and the default -----------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("198.51.100.7", SYDNEY),
        ("203.0.113.250", SAO_PAULO),
        ("2001:db8:1:ff::42", TOKYO),
        ("::ffff:198.51.100.7", SYDNEY),  # how a dual-stack socket reports an IPv4 peer
        ("192.0.2.1", NOWHERE),  # not in the database
        ("2001:db8:2::1", NOWHERE),
        ("127.0.0.1", NOWHERE),
        ("", NOWHERE),  # no address at all (e.g. a unix socket)
    ],
)
def test_geoip_or_default_by_address(locator: ClientLocator, host: str, expected: Location) -> None:
    assert locator.locate(host, None) == expected


def test_without_a_database_every_client_is_at_the_default() -> None:
    locator = ClientLocator(DEFAULT)
    assert locator.locate("198.51.100.7", None) == NOWHERE
    assert locator.locate("127.0.0.1", b"10,20") == Location(10.0, 20.0, "header")
    locator.close()


def test_an_ipv4_only_database_answers_ipv6_clients_with_the_default(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-City")
    record = {"location": {"latitude": 1.5, "longitude": 2.5}}
    writer.insert_network(IPSet(["198.51.100.0/24"]), record)
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    locator = ClientLocator(DEFAULT, geoip_path=str(tmp_path / "v4.mmdb"))
    assert locator.locate("198.51.100.1", None) == Location(1.5, 2.5, "geoip")
    assert locator.locate("2001:db8:1::1", None) == NOWHERE
    locator.close()


def test_records_without_coordinates_give_the_default(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["198.51.100.0/24"]), {"country": {"iso_code": "AU"}})
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"location": {"time_zone": "UTC"}})
    writer.to_db_file(str(tmp_path / "country.mmdb"))
    locator = ClientLocator(DEFAULT, geoip_path=str(tmp_path / "country.mmdb"))
    assert locator.locate("198.51.100.1", None) == NOWHERE
    assert locator.locate("203.0.113.1", None) == NOWHERE
    locator.close()


# -- the trusted edge header ----------------------------------------------------------


def test_edge_header_from_a_trusted_proxy_wins_over_geoip(city_db: Path) -> None:
    locator = ClientLocator(DEFAULT, ("198.51.100.0/24",), str(city_db))
    assert locator.locate("198.51.100.7", b"48.85,2.35") == Location(48.85, 2.35, "header")
    locator.close()


def test_edge_header_from_an_untrusted_peer_is_ignored_and_geoip_used(
    locator: ClientLocator,
) -> None:
    assert locator.locate("198.51.100.7", b"48.85,2.35") == SYDNEY
    assert locator.locate("192.0.2.1", b"48.85,2.35") == NOWHERE


@pytest.mark.parametrize("raw", [b"", b"nope", b"48.85", b"91,0", b"0,181", b"a,b", b"1,2,3"])
def test_a_malformed_edge_header_falls_back(city_db: Path, raw: bytes) -> None:
    trusted_client = ClientLocator(DEFAULT, ("198.51.100.0/24",), str(city_db))
    assert trusted_client.locate("198.51.100.7", raw) == SYDNEY
    trusted_client.close()
    loopback = ClientLocator(DEFAULT, geoip_path=str(city_db))
    assert loopback.locate("127.0.0.1", raw) == NOWHERE
    loopback.close()


def test_nothing_is_trusted_when_no_proxy_is_configured(city_db: Path) -> None:
    locator = ClientLocator(DEFAULT, (), str(city_db))
    assert locator.locate("127.0.0.1", b"10,20", xff("198.51.100.7")) == NOWHERE
    assert locator.locate("203.0.113.9", b"10,20", xff("198.51.100.7")) == SAO_PAULO
    locator.close()


# -- X-Forwarded-For -------------------------------------------------------------------


def test_forwarded_for_from_a_trusted_proxy_names_the_client(locator: ClientLocator) -> None:
    assert locator.locate("127.0.0.1", None, xff("198.51.100.7")) == SYDNEY
    assert locator.locate("::1", None, xff("2001:db8:1::9")) == TOKYO
    assert locator.locate("10.1.2.3", None, xff("203.0.113.1")) == SAO_PAULO


def test_forwarded_for_from_an_untrusted_peer_is_ignored(locator: ClientLocator) -> None:
    # a client that talks to the router directly cannot claim another address
    assert locator.locate("203.0.113.9", None, xff("198.51.100.7")) == SAO_PAULO
    assert locator.locate("192.0.2.1", None, xff("198.51.100.7")) == NOWHERE
    assert locator.client_address("192.0.2.1", xff("198.51.100.7")) == parse_address("192.0.2.1")


def test_the_rightmost_untrusted_address_is_the_client(locator: ClientLocator) -> None:
    # the client sent its own X-Forwarded-For (Tokyo); the load balancer appended the
    # address it saw, then two internal proxies forwarded it
    chain = xff("2001:db8:1::1, 198.51.100.7, 10.0.0.5, 10.0.0.6")
    assert locator.client_address("127.0.0.1", chain) == parse_address("198.51.100.7")
    assert locator.locate("127.0.0.1", None, chain) == SYDNEY


def test_every_forwarded_for_line_is_one_chain(locator: ClientLocator) -> None:
    # a proxy that adds a line of its own instead of extending the client's
    headers = [
        (b"x-forwarded-for", b"2001:db8:1::1"),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"198.51.100.7"),
    ]
    assert locator.locate("127.0.0.1", None, headers) == SYDNEY


def test_forwarded_for_entries_with_ports_and_brackets(locator: ClientLocator) -> None:
    assert locator.locate("127.0.0.1", None, xff("198.51.100.7:4711")) == SYDNEY
    assert locator.locate("127.0.0.1", None, xff("[2001:db8:1::9]:4711")) == TOKYO
    assert locator.locate("127.0.0.1", None, xff("[2001:db8:1::9]")) == TOKYO
    assert locator.locate("127.0.0.1", None, xff(" 198.51.100.7 ,, 10.0.0.5 ")) == SYDNEY


def test_a_malformed_entry_on_the_trusted_side_gives_the_peer(locator: ClientLocator) -> None:
    peer = parse_address("127.0.0.1")
    chains = ["198.51.100.7, unknown", "198.51.100.7, _hidden, 10.0.0.5", "300.1.1.1"]
    for chain in [*chains, "[2001:db8:1::9", "198.51.100.7:http"]:
        assert locator.client_address("127.0.0.1", xff(chain)) == peer, chain
        assert locator.locate("127.0.0.1", None, xff(chain)) == NOWHERE, chain


def test_whatever_the_client_wrote_left_of_its_address_is_not_read(
    locator: ClientLocator,
) -> None:
    assert locator.locate("127.0.0.1", None, xff("garbage, 198.51.100.7")) == SYDNEY


def test_a_chain_of_trusted_proxies_only_gives_its_leftmost(locator: ClientLocator) -> None:
    assert locator.client_address("127.0.0.1", xff("10.0.0.1, 10.0.0.2")) == parse_address(
        "10.0.0.1"
    )
    assert locator.client_address("127.0.0.1", xff("")) == parse_address("127.0.0.1")
    assert locator.client_address("127.0.0.1", []) == parse_address("127.0.0.1")


def test_the_edge_header_wins_over_forwarded_for(locator: ClientLocator) -> None:
    assert locator.locate("127.0.0.1", b"10,20", xff("198.51.100.7")) == Location(
        10.0, 20.0, "header"
    )
    assert locator.locate("127.0.0.1", b"bad", xff("198.51.100.7")) == SYDNEY


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("198.51.100.7", "198.51.100.7"),
        (" 198.51.100.7:80 ", "198.51.100.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:198.51.100.7", "198.51.100.7"),
        ("unknown", None),
        ("", None),
        ("[2001:db8::1]x", None),
        ("[2001:db8::1]:port", None),
        ("198.51.100.7:", "198.51.100.7"),
        ("198.51.100.7:x", None),
        ("198.51.100", None),
    ],
)
def test_parse_address(raw: str, expected: str | None) -> None:
    got = parse_address(raw)
    assert (str(got) if got is not None else None) == expected


# -- configuration errors ---------------------------------------------------------------


def test_a_missing_database_is_a_clear_error_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "GeoLite2-City.mmdb"
    with pytest.raises(FileNotFoundError, match=r"GeoIP database not found: .*GeoLite2-City"):
        ClientLocator(DEFAULT, geoip_path=str(missing))
    with pytest.raises(FileNotFoundError, match="GeoIP database not found"):
        ClientLocator(DEFAULT, geoip_path=str(tmp_path))  # a directory is no database
    settings = RouterSettings(port=0, snapshot_path=tmp_path / "s.json", geoip_path=str(missing))
    with pytest.raises(FileNotFoundError, match="GeoIP database not found"):
        RouterServer(settings, NearestPolicy())


def test_a_file_that_is_no_database_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.mmdb"
    bogus.write_bytes(b"not a maxmind database" * 10)
    with pytest.raises(maxminddb.InvalidDatabaseError):
        ClientLocator(DEFAULT, geoip_path=str(bogus))


# -- end to end: the router picks the region nearest the city of the client's address -----


@pytest.fixture
async def geo_router(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> AsyncIterator[httpx.AsyncClient]:
    near, far = two_workers
    # the test client connects from loopback (Sydney here); 198.51.100.0/24 is Frankfurt
    db = write_city_db(
        tmp_path / "city.mmdb", {"127.0.0.0/8": "Sydney", "198.51.100.0/24": "Frankfurt"}
    )
    settings = RouterSettings(
        port=0,
        snapshot_path=tmp_path / "snap.json",
        geoip_path=str(db),
        default_location=CITIES["Sao Paulo"],
    )
    server = RouterServer(settings, NearestPolicy())
    regions = {
        "frankfurt": (near, 50.1, 8.7),
        "sydney": (far, -33.9, 151.2),
        "sao-paulo": (near, -23.5, -46.6),  # nearest the default location
    }
    server.store.offer(snapshot_for(regions))
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await server.stop()


async def test_router_routes_by_the_city_of_the_client_address(geo_router) -> None:
    r = await geo_router.post("/v2/models/mlp/infer", content=b"{}")
    assert r.status_code == 200
    assert r.headers["x-meridian-region"] == "sydney"
    assert r.json()["served_by"] == "far"


async def test_router_routes_by_forwarded_for_from_its_trusted_load_balancer(geo_router) -> None:
    # loopback is a trusted proxy by default: X-Forwarded-For names the client
    headers = {"x-forwarded-for": "2001:db8:1::1, 198.51.100.7"}
    r = await geo_router.post("/v2/models/mlp/infer", content=b"{}", headers=headers)
    assert r.status_code == 200
    assert r.headers["x-meridian-region"] == "frankfurt"
    # ... and the trusted edge header still wins over it
    headers["x-meridian-client-location"] = "-33.9,151.2"
    r = await geo_router.post("/v2/models/mlp/infer", content=b"{}", headers=headers)
    assert r.headers["x-meridian-region"] == "sydney"


async def test_router_sends_clients_it_cannot_locate_to_the_default(geo_router) -> None:
    for forwarded in ("192.0.2.1", "2001:db8:2::1"):  # not in the database
        headers = {"x-forwarded-for": forwarded}
        r = await geo_router.post("/v2/models/mlp/infer", content=b"{}", headers=headers)
        assert r.status_code == 200
        assert r.headers["x-meridian-region"] == "sao-paulo", forwarded


async def test_router_ignores_forwarded_for_from_an_untrusted_peer(
    tmp_path: Path, two_workers: tuple[StandInWorker, StandInWorker]
) -> None:
    near, far = two_workers
    db = write_city_db(
        tmp_path / "city.mmdb", {"127.0.0.0/8": "Sydney", "198.51.100.0/24": "Frankfurt"}
    )
    settings = RouterSettings(
        port=0, snapshot_path=tmp_path / "snap.json", geoip_path=str(db), trusted_proxies=()
    )
    server = RouterServer(settings, NearestPolicy())
    server.store.offer(
        snapshot_for({"frankfurt": (near, 50.1, 8.7), "sydney": (far, -33.9, 151.2)})
    )
    port = await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            headers = {"x-forwarded-for": "198.51.100.7", "x-meridian-client-location": "50,8"}
            r = await client.post("/v2/models/mlp/infer", content=b"{}", headers=headers)
            assert r.status_code == 200
            assert r.headers["x-meridian-region"] == "sydney"  # the peer's own address
    finally:
        await server.stop()
