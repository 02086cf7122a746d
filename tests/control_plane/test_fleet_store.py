"""What the fleet plane reads from and writes to SQL, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.models import Deployment, ModelVariant, ModelVersion, Region
from control_plane.fleet.store import FleetStore
from meridian.errors import NotFound, PermissionDenied, Unauthenticated
from tests.fleet_support import REGIONS, make_registry


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'registry.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    made = make_registry(url)
    try:
        yield made
    finally:
        made.kw["bind"].dispose()


async def test_registry_view_with_variant_artifacts(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        version = s.scalar(sa.select(ModelVersion))
        assert version is not None
        s.add(
            ModelVariant(
                model_version=version,
                name="int8",
                artifact_uri="http://a/int8.onnx",
                artifact_sha256="cd" * 32,
            )
        )
        ap = s.scalar(sa.select(Region).where(Region.name == "ap-south"))
        s.add(Deployment(model_version=version, region=ap, variant="int8", traffic_weight=0.5))
        eu_row = s.scalar(sa.select(Deployment).join(Region).where(Region.name == "eu-west"))
        assert eu_row is not None
        eu_row.degrade_to = "int8"
    view = await FleetStore(sessions).load()
    assert [r.name for r in view.regions] == ["ap-south", "eu-west", "old-dc", "us-east"]
    assert view.region("old-dc").status == "disabled"  # type: ignore[union-attr]
    ap_dep = view.deployments_in("ap-south")[0]
    assert (ap_dep.variant, ap_dep.artifact_url, ap_dep.traffic_weight) == (
        "int8",
        "http://a/int8.onnx",
        0.5,
    )
    eu_dep = view.deployments_in("eu-west")[0]
    assert (eu_dep.model, eu_dep.version, eu_dep.min_replicas) == ("resnet", "1", 2)
    assert eu_dep.artifact_sha256 == "ab" * 32
    # its brownout reserve: the int8 variant's artifact beside the base's
    assert (eu_dep.degrade_to, eu_dep.degrade_url, eu_dep.degrade_sha256) == (
        "int8",
        "http://a/int8.onnx",
        "cd" * 32,
    )
    assert ap_dep.degrade_to == ""


async def test_credentials(sessions: sessionmaker[Session]) -> None:
    store = FleetStore(sessions)
    assert (await store.check_credential("eu-west", REGIONS["eu-west"][2])).region == "eu-west"
    with pytest.raises(Unauthenticated, match="wrong or revoked"):
        await store.check_credential("eu-west", "nope")
    with pytest.raises(Unauthenticated, match="no agent credential"):
        await store.check_credential("eu-west", "")
    with pytest.raises(PermissionDenied, match="belongs to region 'us-east'"):
        await store.check_credential("eu-west", REGIONS["us-east"][2])
    with pytest.raises(PermissionDenied, match="disabled"):
        await store.check_credential("old-dc", REGIONS["old-dc"][2])


async def test_drain_bumps_the_row_version(sessions: sessionmaker[Session]) -> None:
    store = FleetStore(sessions)

    def row_version() -> int:
        with sessions() as s:
            return int(s.scalar(sa.select(Region.row_version).where(Region.name == "us-east")))

    before = row_version()
    assert await store.set_draining("us-east", True, actor="bob") == "draining"
    assert await store.set_draining("us-east", True, actor="bob") == "draining"  # no-op
    assert row_version() == before + 1  # REST ETags of the region change with it
    assert store.writes == 1
    with pytest.raises(NotFound):
        await store.set_draining("atlantis", True, actor="bob")
    with pytest.raises(PermissionDenied):
        await store.set_draining("old-dc", False, actor="bob")
