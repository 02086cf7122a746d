from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import services


@pytest.fixture(scope="session")
def redis_url() -> str:
    return services.require_redis()


@pytest.fixture(scope="session")
def etcd_endpoint() -> str:
    return services.require_etcd()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    services.stop_session_etcd()  # the etcd this session started, if any, and its data dir


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with services.fresh_postgres_database() as url:
        yield url
