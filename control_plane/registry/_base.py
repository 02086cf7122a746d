"""Transactions, audit entries and row conversions shared by the registry's parts."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from control_plane import schemas
from control_plane.artifacts import ArtifactStore
from control_plane.db import models as m
from control_plane.db.session import Database
from meridian.errors import Conflict, InvalidInput, NotFound, PreconditionFailed, Unavailable

T = TypeVar("T")

MAX_PAGE = 500


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret(prefix: str) -> str:
    """A fresh bearer secret; only its sha256 is ever stored."""
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class RegistryBase:
    """The session handling every part of the registry uses."""

    def __init__(self, db: Database, store: ArtifactStore, *, max_artifact_bytes: int) -> None:
        self.db = db
        self.store = store
        self.max_artifact_bytes = max_artifact_bytes

    @contextmanager
    def _read(self) -> Iterator[Session]:
        try:
            with self.db.reads() as session:
                yield session
        except sa.exc.DataError as exc:
            raise InvalidInput("a value is out of range for the registry") from exc
        except sa.exc.OperationalError as exc:
            raise Unavailable("the registry database is unavailable; retry") from exc

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        try:
            with self.db.writes() as session, session.begin():
                yield session
        except StaleDataError as exc:
            raise PreconditionFailed(
                "the resource changed concurrently; fetch it again and retry with its new ETag"
            ) from exc
        except sa.exc.IntegrityError as exc:
            raise Conflict(
                "the change conflicts with the registry's current state "
                "(a duplicate, or something still refers to it)"
            ) from exc
        except sa.exc.DataError as exc:
            raise InvalidInput("a value is out of range for the registry") from exc
        except sa.exc.OperationalError as exc:
            raise Unavailable("the registry database is busy or unavailable; retry") from exc

    @staticmethod
    def _model_row(session: Session, name: str) -> m.Model:
        row = session.scalar(sa.select(m.Model).where(m.Model.name == name))
        if row is None:
            raise NotFound(f"model {name!r} not found")
        return row

    def _version_row(self, session: Session, model: str, version: str) -> m.ModelVersion:
        row = session.scalar(
            sa.select(m.ModelVersion)
            .join(m.Model)
            .where(m.Model.name == model, m.ModelVersion.version == version)
        )
        if row is None:
            self._model_row(session, model)
            raise NotFound(f"version {version!r} of model {model!r} not found")
        return row

    @staticmethod
    def _audit(
        session: Session,
        actor: str,
        action: str,
        entity: str,
        key: str,
        detail: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            m.AuditEntry(
                actor=actor, action=action, entity=entity, entity_key=key, detail=detail or {}
            )
        )

    @staticmethod
    def _check_etag(row: Any, expected: int | None, what: str) -> None:
        if expected is not None and row.row_version != expected:
            raise PreconditionFailed(
                f"{what} is at version {row.row_version}, not {expected}; "
                "fetch it again and retry with its new ETag"
            )

    @staticmethod
    def _page(
        session: Session, query: sa.Select[Any], limit: int, offset: int
    ) -> tuple[Sequence[Any], int]:
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {MAX_PAGE}")
        if offset < 0:
            raise InvalidInput("offset must be >= 0")
        total = session.scalar(sa.select(sa.func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.limit(limit).offset(offset)).all()
        return rows, total

    @staticmethod
    def _changes(
        row: Any, patch: dict[str, Any], nullable: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Apply a PATCH (only fields the client sent) and return what really changed."""
        changed: dict[str, Any] = {}
        for field, value in patch.items():
            if value is None and field not in nullable:
                raise InvalidInput(f"{field} cannot be null")
            if getattr(row, field) != value:
                setattr(row, field, value)
                changed[field] = value.value if hasattr(value, "value") else value
        return changed


# --- ORM row -> public schema ------------------------------------------------


def model_public(row: m.Model) -> schemas.ModelPublic:
    return schemas.ModelPublic(
        name=row.name,
        description=row.description,
        versions=[v.version for v in row.versions],
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        row_version=row.row_version,
    )


def version_public(row: m.ModelVersion) -> schemas.VersionPublic:
    return schemas.VersionPublic(
        model=row.model.name,
        version=row.version,
        format=row.format,
        inputs=[schemas.TensorSpec.model_validate(s) for s in row.inputs],
        outputs=[schemas.TensorSpec.model_validate(s) for s in row.outputs],
        artifact_uri=row.artifact_uri,
        artifact_sha256=row.artifact_sha256,
        artifact_size=row.artifact_size,
        variants=[v.name for v in row.variants],
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        row_version=row.row_version,
    )


def variant_public(row: m.ModelVariant) -> schemas.VariantPublic:
    return schemas.VariantPublic(
        model=row.model_version.model.name,
        version=row.model_version.version,
        name=row.name,
        description=row.description,
        max_abs_error=row.max_abs_error,
        artifact_uri=row.artifact_uri,
        artifact_sha256=row.artifact_sha256,
        artifact_size=row.artifact_size,
        created_at=utc(row.created_at),
    )


def region_public(row: m.Region) -> schemas.RegionPublic:
    return schemas.RegionPublic(
        name=row.name,
        provider=row.provider,
        lat=row.lat,
        lon=row.lon,
        gpu_type=row.gpu_type,
        gpu_count=row.gpu_count,
        status=row.status,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        row_version=row.row_version,
    )


def deployment_public(row: m.Deployment) -> schemas.DeploymentPublic:
    return schemas.DeploymentPublic(
        id=row.id,
        model=row.model_version.model.name,
        version=row.model_version.version,
        region=row.region.name,
        variant=row.variant,
        min_replicas=row.min_replicas,
        max_replicas=row.max_replicas,
        traffic_weight=row.traffic_weight,
        autoscale_pinned=row.autoscale_pinned,
        pinned_replicas=row.pinned_replicas,
        degrade_to=row.degrade_to,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        row_version=row.row_version,
    )


def token_public(row: m.ApiToken) -> schemas.TokenPublic:
    return schemas.TokenPublic(
        id=row.id,
        name=row.name,
        scopes=row.scopes.split(),  # type: ignore[arg-type]
        created_at=utc(row.created_at),
        created_by=row.created_by,
        revoked_at=utc(row.revoked_at) if row.revoked_at else None,
        expires_at=utc(row.expires_at) if row.expires_at else None,
        last_used_at=utc(row.last_used_at) if row.last_used_at else None,
    )


def audit_public(row: m.AuditEntry) -> schemas.AuditPublic:
    return schemas.AuditPublic(
        id=row.id,
        at=utc(row.at),
        actor=row.actor,
        action=row.action,
        entity=row.entity,
        entity_key=row.entity_key,
        detail=row.detail,
    )
