"""SQLAlchemy models of the registry.

Every table that operators update carries ``row_version`` (SQLAlchemy's
``version_id_col``): it is the ETag of the REST API, and a stale write fails
instead of silently overwriting another operator's change.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

__all__ = [
    "ApiKey",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Deployment",
    "Model",
    "ModelFormat",
    "ModelVariant",
    "ModelVersion",
    "Region",
    "RegionHealth",
    "RegionStatus",
    "Rollout",
    "utcnow",
]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING)
    type_annotation_map = {
        dt.datetime: sa.DateTime(timezone=True),
        dict[str, Any]: sa.JSON,
        list[Any]: sa.JSON,
    }


class ModelFormat(enum.StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    # a causal language model: a tar archive of its Hugging Face folder
    GENERATIVE = "generative"


class RegionStatus(enum.StrEnum):
    ACTIVE = "active"
    DRAINING = "draining"
    DISABLED = "disabled"


class _Versioned:
    """Columns every operator-editable row has."""

    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    row_version: Mapped[int] = mapped_column(default=1)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        # optimistic concurrency: every UPDATE/DELETE checks and bumps row_version
        return {"version_id_col": cls.row_version}


class Model(_Versioned, Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    description: Mapped[str] = mapped_column(sa.String(1024), default="")

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", cascade="all, delete-orphan", order_by="ModelVersion.id"
    )


class ModelVersion(_Versioned, Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        sa.UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(
        sa.ForeignKey("models.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[str] = mapped_column(sa.String(64))
    format: Mapped[ModelFormat] = mapped_column(
        sa.Enum(ModelFormat, name="model_format", values_callable=lambda e: [m.value for m in e])
    )
    # signature: [{"name": str, "datatype": "FP32", "shape": [-1, 4]}]
    inputs: Mapped[list[Any]] = mapped_column(default=list)
    outputs: Mapped[list[Any]] = mapped_column(default=list)
    # artifact: set once uploaded and verified
    artifact_uri: Mapped[str | None] = mapped_column(sa.String(1024), default=None)
    artifact_sha256: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    artifact_size: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)

    model: Mapped[Model] = relationship(back_populates="versions")
    variants: Mapped[list[ModelVariant]] = relationship(
        back_populates="model_version", cascade="all, delete-orphan", order_by="ModelVariant.id"
    )
    deployments: Mapped[list[Deployment]] = relationship(back_populates="model_version")


class ModelVariant(Base):
    """A quantized (or otherwise converted) form of one model version, e.g. ``int8``."""

    __tablename__ = "model_variants"
    __table_args__ = (
        sa.UniqueConstraint("model_version_id", "name", name="uq_model_variants_version_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(sa.String(32))
    description: Mapped[str] = mapped_column(sa.String(1024), default="")
    # measured against the base version on sample inputs, when known
    max_abs_error: Mapped[float | None] = mapped_column(default=None)
    artifact_uri: Mapped[str | None] = mapped_column(sa.String(1024), default=None)
    artifact_sha256: Mapped[str | None] = mapped_column(sa.String(64), default=None)
    artifact_size: Mapped[int | None] = mapped_column(sa.BigInteger, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    model_version: Mapped[ModelVersion] = relationship(back_populates="variants")


class Region(_Versioned, Base):
    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64), unique=True)
    provider: Mapped[str] = mapped_column(sa.String(32), default="")
    lat: Mapped[float]
    lon: Mapped[float]
    gpu_type: Mapped[str] = mapped_column(sa.String(64), default="")
    gpu_count: Mapped[int] = mapped_column(default=0)
    status: Mapped[RegionStatus] = mapped_column(
        sa.Enum(RegionStatus, name="region_status", values_callable=lambda e: [m.value for m in e]),
        default=RegionStatus.ACTIVE,
    )
    # the agent credential: shown once at creation, stored as sha256
    agent_credential_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)

    deployments: Mapped[list[Deployment]] = relationship(back_populates="region")


class Deployment(_Versioned, Base):
    """A model version placed in a region."""

    __tablename__ = "deployments"
    __table_args__ = (
        sa.UniqueConstraint("model_version_id", "region_id", name="uq_deployments_version_region"),
        sa.CheckConstraint("min_replicas >= 0", name="min_replicas_nonnegative"),
        sa.CheckConstraint("max_replicas >= min_replicas", name="max_at_least_min"),
        sa.CheckConstraint("traffic_weight >= 0", name="weight_nonnegative"),
        sa.CheckConstraint(
            "pinned_replicas IS NULL OR pinned_replicas >= 0", name="pinned_replicas_nonnegative"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True
    )
    region_id: Mapped[int] = mapped_column(
        sa.ForeignKey("regions.id", ondelete="RESTRICT"), index=True
    )
    variant: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    min_replicas: Mapped[int] = mapped_column(default=1)
    max_replicas: Mapped[int] = mapped_column(default=1)
    traffic_weight: Mapped[float] = mapped_column(default=1.0)
    # operators may pin a deployment: no autoscaling, ``pinned_replicas`` workers
    autoscale_pinned: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    pinned_replicas: Mapped[int | None] = mapped_column(default=None)
    # brownout: the variant of this version that serves the region's overflow while it is
    # saturated (run as a reserve worker beside the deployment's own)
    degrade_to: Mapped[str | None] = mapped_column(sa.String(32), default=None)

    model_version: Mapped[ModelVersion] = relationship(back_populates="deployments")
    region: Mapped[Region] = relationship(back_populates="deployments")


class Rollout(_Versioned, Base):
    """A new model version moving region by region, wave by wave, step by step (its
    position and state are what a new leader resumes from)."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(sa.String(128), index=True)
    from_version: Mapped[str] = mapped_column(sa.String(64))
    to_version: Mapped[str] = mapped_column(sa.String(64))
    variant: Mapped[str | None] = mapped_column(sa.String(32), default=None)
    waves: Mapped[list[Any]] = mapped_column(default=list)  # [[region, ...], ...]
    steps: Mapped[list[Any]] = mapped_column(default=list)  # canary shares, last 1.0
    bake_s: Mapped[float] = mapped_column(default=300.0)
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # running | paused | completed | rolled_back | aborted
    state: Mapped[str] = mapped_column(sa.String(16), default="running", index=True)
    wave: Mapped[int] = mapped_column(default=0)
    step: Mapped[int] = mapped_column(default=-1)  # -1: the wave's workers are starting
    step_started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    reason: Mapped[str] = mapped_column(sa.String(1024), default="")
    figures: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the last gate figures
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128))
    token_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    # space-separated subset of: admin read agent
    scopes: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # None: never expires
    expires_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # recorded at most once a minute (not a write per request)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class ApiKey(_Versioned, Base):
    """An end user's key for the router, with its rate limit. Only the sha256 is kept; the
    routers receive digests and limits in the keyring."""

    __tablename__ = "api_keys"
    __table_args__ = (
        sa.CheckConstraint("rate_per_s > 0", name="rate_positive"),
        sa.CheckConstraint("burst >= 1", name="burst_at_least_one"),
        sa.CheckConstraint("priority IN ('interactive', 'batch')", name="known_priority"),
        sa.CheckConstraint("deadline_ms IS NULL OR deadline_ms > 0", name="deadline_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(128), unique=True)
    key_hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    key_prefix: Mapped[str] = mapped_column(sa.String(16))  # to recognise a key in logs
    rate_per_s: Mapped[float]
    burst: Mapped[float]
    # model names this key may call; empty: every model
    models: Mapped[list[Any]] = mapped_column(default=list)
    # generation tokens (prompt + completion) per minute; None: no token budget
    tokens_per_minute: Mapped[float | None] = mapped_column(default=None)
    # request class under overload (interactive | batch) and the deadline of requests that
    # carry none, in milliseconds (None: no deadline)
    priority: Mapped[str] = mapped_column(
        sa.String(16), default="interactive", server_default="interactive"
    )
    deadline_ms: Mapped[float | None] = mapped_column(default=None)
    created_by: Mapped[str] = mapped_column(sa.String(128), default="")
    revoked_at: Mapped[dt.datetime | None] = mapped_column(default=None)


class AuditEntry(Base):
    """Who changed what, when. Written in the same transaction as the change."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_entity_key", "entity", "entity_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))
    action: Mapped[str] = mapped_column(sa.String(32))  # create | update | delete | ...
    entity: Mapped[str] = mapped_column(sa.String(32))  # model | model_version | region | ...
    entity_key: Mapped[str] = mapped_column(sa.String(256))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class RegionHealth(Base):
    """The last health the leader saw per region, written periodically (changed rows only),
    so a restarted control plane and operators' queries see it without the live ledger."""

    __tablename__ = "region_health"

    region: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    state: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str] = mapped_column(sa.String(1024), default="")
    gpu_count: Mapped[int] = mapped_column(default=0)
    healthy_gpus: Mapped[int] = mapped_column(default=0)
    workers: Mapped[int] = mapped_column(default=0)
    routable_workers: Mapped[int] = mapped_column(default=0)
    last_report_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
