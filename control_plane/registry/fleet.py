"""Regions (and their agent credentials) and deployments of model versions into them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, contains_eager

from control_plane import schemas
from control_plane.db import models as m
from meridian.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated

from ._base import RegistryBase, deployment_public, new_secret, region_public, secret_hash

AGENT_CREDENTIAL_PREFIX = "mrd_agent"


def _placement(row: m.Deployment) -> dict[str, str]:
    return {
        "model": row.model_version.model.name,
        "version": row.model_version.version,
        "region": row.region.name,
    }


def _deployments_query() -> sa.Select[Any]:
    """Deployments with their version, model and region loaded in the same query."""
    return (
        sa.select(m.Deployment)
        .join(m.Deployment.model_version)
        .join(m.ModelVersion.model)
        .join(m.Deployment.region)
        .options(
            contains_eager(m.Deployment.model_version).contains_eager(m.ModelVersion.model),
            contains_eager(m.Deployment.region),
        )
        .order_by(m.Deployment.id)
    )


class FleetOps(RegistryBase):
    # --- regions ---------------------------------------------------------------

    @staticmethod
    def _region_row(session: Session, name: str) -> m.Region:
        row = session.scalar(sa.select(m.Region).where(m.Region.name == name))
        if row is None:
            raise NotFound(f"region {name!r} not found")
        return row

    def create_region(self, data: schemas.RegionCreate, *, actor: str) -> schemas.RegionCreated:
        credential = new_secret(AGENT_CREDENTIAL_PREFIX)
        with self._write() as s:
            if s.scalar(sa.select(m.Region.id).where(m.Region.name == data.name)):
                raise Conflict(f"region {data.name!r} already exists")
            row = m.Region(**data.model_dump(), agent_credential_hash=secret_hash(credential))
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "region", data.name, data.model_dump(mode="json"))
            public = region_public(row)
        return schemas.RegionCreated(**public.model_dump(), agent_credential=credential)

    def list_regions(
        self, *, status: m.RegionStatus | None = None, limit: int, offset: int
    ) -> schemas.Page[schemas.RegionPublic]:
        query = sa.select(m.Region).order_by(m.Region.name)
        if status is not None:
            query = query.where(m.Region.status == status)
        with self._read() as s:
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[region_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def get_region(self, name: str) -> schemas.RegionPublic:
        with self._read() as s:
            return region_public(self._region_row(s, name))

    def update_region(
        self, name: str, data: schemas.RegionUpdate, *, expected_version: int | None, actor: str
    ) -> schemas.RegionPublic:
        with self._write() as s:
            row = self._region_row(s, name)
            self._check_etag(row, expected_version, f"region {name!r}")
            changed = self._changes(row, data.model_dump(exclude_unset=True))
            if changed:
                s.flush()
                self._audit(s, actor, "update", "region", name, changed)
            return region_public(row)

    def delete_region(self, name: str, *, expected_version: int | None, actor: str) -> None:
        with self._write() as s:
            row = self._region_row(s, name)
            self._check_etag(row, expected_version, f"region {name!r}")
            if row.deployments:
                placed = sorted(
                    f"{d.model_version.model.name}:{d.model_version.version}"
                    for d in row.deployments
                )
                raise Conflict(
                    f"region {name!r} still has deployments ({', '.join(placed)}); delete "
                    "them first"
                )
            s.delete(row)
            s.flush()
            self._audit(s, actor, "delete", "region", name)

    def rotate_region_credential(self, name: str, *, actor: str) -> schemas.RegionCreated:
        """A new agent credential for the region; the old one stops working at once."""
        credential = new_secret(AGENT_CREDENTIAL_PREFIX)
        with self._write() as s:
            row = self._region_row(s, name)
            row.agent_credential_hash = secret_hash(credential)
            s.flush()
            self._audit(s, actor, "rotate_credential", "region", name)
            public = region_public(row)
        return schemas.RegionCreated(**public.model_dump(), agent_credential=credential)

    def authenticate_agent(self, credential: str) -> schemas.RegionPublic:
        """The region an agent credential belongs to.

        Raises ``Unauthenticated`` for an unknown credential and ``PermissionDenied``
        when the region is disabled.
        """
        if not credential:
            raise Unauthenticated("an agent credential is required")
        with self._read() as s:
            row = s.scalar(
                sa.select(m.Region).where(m.Region.agent_credential_hash == secret_hash(credential))
            )
            if row is None:
                raise Unauthenticated("unknown agent credential")
            if row.status == m.RegionStatus.DISABLED:
                raise PermissionDenied(f"region {row.name!r} is disabled")
            return region_public(row)

    # --- deployments -------------------------------------------------------------

    @staticmethod
    def _deployment_row(session: Session, deployment_id: int) -> m.Deployment:
        row = session.get(m.Deployment, deployment_id)
        if row is None:
            raise NotFound(f"deployment {deployment_id} not found")
        return row

    @staticmethod
    def _check_variant(mv: m.ModelVersion, variant: str | None) -> None:
        ref = f"{mv.model.name}:{mv.version}"
        if variant is None:
            if not mv.artifact_sha256:
                raise Conflict(f"{ref} has no artifact uploaded yet; upload it first")
            return
        for v in mv.variants:
            if v.name == variant:
                if not v.artifact_sha256:
                    raise Conflict(f"variant {ref}:{variant} has no artifact uploaded yet")
                return
        raise NotFound(f"variant {variant!r} of {ref} not found")

    @classmethod
    def _check_degrade_to(cls, mv: m.ModelVersion, variant: str | None, degrade_to: str) -> None:
        """``degrade_to`` names a variant of the version, with its artifact, other than the
        one the deployment serves."""
        if degrade_to == (variant or ""):
            raise InvalidInput(
                f"degrade_to {degrade_to!r} is what the deployment serves already; name "
                "another variant"
            )
        cls._check_variant(mv, degrade_to)

    def create_deployment(
        self, data: schemas.DeploymentCreate, *, actor: str
    ) -> schemas.DeploymentPublic:
        with self._write() as s:
            mv = self._version_row(s, data.model, data.version)
            region = self._region_row(s, data.region)
            if region.status == m.RegionStatus.DISABLED:
                raise Conflict(f"region {data.region!r} is disabled; enable it to deploy there")
            self._check_variant(mv, data.variant)
            if data.degrade_to is not None:
                self._check_degrade_to(mv, data.variant, data.degrade_to)
            duplicate = s.scalar(
                sa.select(m.Deployment.id).where(
                    m.Deployment.model_version_id == mv.id, m.Deployment.region_id == region.id
                )
            )
            if duplicate:
                raise Conflict(
                    f"{data.model}:{data.version} is already deployed in {data.region!r} "
                    f"(deployment {duplicate})"
                )
            row = m.Deployment(
                model_version=mv,
                region=region,
                variant=data.variant,
                min_replicas=data.min_replicas,
                max_replicas=data.max_replicas,
                traffic_weight=data.traffic_weight,
                degrade_to=data.degrade_to,
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "deployment", str(row.id), data.model_dump())
            return deployment_public(row)

    def list_deployments(
        self,
        *,
        model: str | None = None,
        version: str | None = None,
        region: str | None = None,
        limit: int,
        offset: int,
    ) -> schemas.Page[schemas.DeploymentPublic]:
        query = _deployments_query()
        if model is not None:
            query = query.where(m.Model.name == model)
        if version is not None:
            query = query.where(m.ModelVersion.version == version)
        if region is not None:
            query = query.where(m.Region.name == region)
        with self._read() as s:
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[deployment_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def all_deployments(self) -> list[schemas.DeploymentPublic]:
        """Every deployment at once (for building the routing snapshot)."""
        with self._read() as s:
            rows = s.scalars(_deployments_query()).all()
            return [deployment_public(r) for r in rows]

    def get_deployment(self, deployment_id: int) -> schemas.DeploymentPublic:
        with self._read() as s:
            return deployment_public(self._deployment_row(s, deployment_id))

    def update_deployment(
        self,
        deployment_id: int,
        data: schemas.DeploymentUpdate,
        *,
        expected_version: int | None,
        actor: str,
    ) -> schemas.DeploymentPublic:
        with self._write() as s:
            row = self._deployment_row(s, deployment_id)
            self._check_etag(row, expected_version, f"deployment {deployment_id}")
            patch = data.model_dump(exclude_unset=True)
            if "variant" in patch:
                self._check_variant(row.model_version, patch["variant"])
            degrade_to = patch.get("degrade_to", row.degrade_to)
            if degrade_to is not None and ("degrade_to" in patch or "variant" in patch):
                variant = patch.get("variant", row.variant)
                self._check_degrade_to(row.model_version, variant, degrade_to)
            changed = self._changes(
                row, patch, nullable=frozenset({"variant", "pinned_replicas", "degrade_to"})
            )
            if row.max_replicas < row.min_replicas:
                raise InvalidInput(
                    f"max_replicas ({row.max_replicas}) must be >= min_replicas "
                    f"({row.min_replicas})"
                )
            if row.autoscale_pinned and row.pinned_replicas is None:
                raise InvalidInput("autoscale_pinned needs pinned_replicas (how many to run)")
            if row.pinned_replicas is not None and row.pinned_replicas > row.max_replicas:
                raise InvalidInput(
                    f"pinned_replicas ({row.pinned_replicas}) must be <= max_replicas "
                    f"({row.max_replicas})"
                )
            if changed:
                s.flush()
                detail = {**_placement(row), **changed}
                self._audit(s, actor, "update", "deployment", str(row.id), detail)
            return deployment_public(row)

    def delete_deployment(
        self, deployment_id: int, *, expected_version: int | None, actor: str
    ) -> None:
        with self._write() as s:
            row = self._deployment_row(s, deployment_id)
            self._check_etag(row, expected_version, f"deployment {deployment_id}")
            placement = _placement(row)
            s.delete(row)
            s.flush()
            self._audit(s, actor, "delete", "deployment", str(deployment_id), placement)
