"""What the fleet plane reads from (and the one thing it writes to) the registry's SQL.

Reads regions, deployments, end users' API keys and agent credentials; writes only a region's
``status`` when an operator drains or undrains it (with an audit entry, in one
transaction). It takes a plain SQLAlchemy ``sessionmaker`` and runs the blocking
calls in a worker thread so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import hmac

import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from control_plane.db.models import (
    ApiKey,
    AuditEntry,
    Deployment,
    Model,
    ModelVariant,
    ModelVersion,
    Region,
    RegionStatus,
)
from control_plane.health.inventory import (
    AgentIdentity,
    DeploymentRecord,
    RegionRecord,
    RegistryView,
)
from control_plane.registry._base import secret_hash
from meridian.errors import NotFound, PermissionDenied, Unauthenticated
from meridian.keyring import ApiKeyGrant

__all__ = ["FleetStore", "credential_hash"]


credential_hash = secret_hash  # how every stored credential is hashed


class FleetStore:
    def __init__(self, sessions: sessionmaker[Session], artifact_base_url: str = "") -> None:
        """``artifact_base_url``: the admin API's URL, from which workers fetch artifacts
        (with their region's credential); without it the store's own URIs are passed on."""
        self._sessions = sessions
        self._artifact_base = artifact_base_url.rstrip("/")
        self.writes = 0  # SQL write transactions issued (for the benchmark)

    # --- registry view ---------------------------------------------------------------------

    async def load(self) -> RegistryView:
        return await asyncio.to_thread(self._load)

    def _load(self) -> RegistryView:
        with self._sessions() as session:
            regions = tuple(
                RegionRecord(
                    name=r.name,
                    lat=r.lat,
                    lon=r.lon,
                    gpu_type=r.gpu_type,
                    gpu_count=r.gpu_count,
                    status=RegionStatus(r.status).value,
                )
                for r in session.scalars(sa.select(Region).order_by(Region.name))
            )
            rows = session.execute(
                sa.select(Deployment, ModelVersion, Model.name, Region.name)
                .join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
                .join(Model, ModelVersion.model_id == Model.id)
                .join(Region, Deployment.region_id == Region.id)
                .order_by(Deployment.id)
            ).all()
            variants = {
                (v.model_version_id, v.name): v for v in session.scalars(sa.select(ModelVariant))
            }
            deployments = []
            for dep, version, model_name, region_name in rows:  # one query, not one per model
                url, sha = version.artifact_uri or "", version.artifact_sha256 or ""
                path = f"/v1/models/{model_name}/versions/{version.version}"
                if dep.variant:
                    variant = variants.get((version.id, dep.variant))
                    if variant is not None:
                        url, sha = variant.artifact_uri or "", variant.artifact_sha256 or ""
                        path += f"/variants/{dep.variant}"
                if self._artifact_base and url:
                    url = f"{self._artifact_base}{path}/artifact"
                degrade_url = degrade_sha = ""
                reserve = variants.get((version.id, dep.degrade_to or ""))
                if reserve is not None:
                    degrade_url = reserve.artifact_uri or ""
                    degrade_sha = reserve.artifact_sha256 or ""
                    if self._artifact_base and degrade_url:
                        degrade_url = (
                            f"{self._artifact_base}/v1/models/{model_name}/versions/"
                            f"{version.version}/variants/{reserve.name}/artifact"
                        )
                deployments.append(
                    DeploymentRecord(
                        model=model_name,
                        version=version.version,
                        region=region_name,
                        variant=dep.variant or "",
                        min_replicas=dep.min_replicas,
                        max_replicas=dep.max_replicas,
                        traffic_weight=dep.traffic_weight,
                        artifact_url=url,
                        artifact_sha256=sha,
                        id=dep.id,
                        autoscale_pinned=dep.autoscale_pinned,
                        pinned_replicas=dep.pinned_replicas,
                        degrade_to=reserve.name if reserve is not None else "",
                        degrade_url=degrade_url,
                        degrade_sha256=degrade_sha,
                    )
                )
            keys = tuple(
                ApiKeyGrant(
                    k.name,
                    k.key_hash,
                    k.rate_per_s,
                    k.burst,
                    tuple(k.models),
                    k.tokens_per_minute,
                    priority="batch" if k.priority == "batch" else "interactive",
                    deadline_ms=k.deadline_ms,
                )
                for k in session.scalars(
                    sa.select(ApiKey).where(ApiKey.revoked_at.is_(None)).order_by(ApiKey.name)
                )
            )
            return RegistryView(regions, tuple(deployments), keys)

    # --- agent credentials -----------------------------------------------------------------

    async def check_credential(self, region: str, credential: str) -> AgentIdentity:
        return await asyncio.to_thread(self._check_credential, region, credential)

    def _check_credential(self, region: str, credential: str) -> AgentIdentity:
        if not credential:
            raise Unauthenticated("no agent credential was sent")
        digest = credential_hash(credential)
        with self._sessions() as session:
            row = session.scalar(sa.select(Region).where(Region.name == region))
            if row is None:
                raise Unauthenticated(f"unknown region {region!r} or wrong credential")
            if not hmac.compare_digest(row.agent_credential_hash, digest):
                other = session.scalar(
                    sa.select(Region.name).where(Region.agent_credential_hash == digest)
                )
                if other is not None:
                    raise PermissionDenied(
                        f"this credential belongs to region {other!r}, not {region!r}"
                    )
                raise Unauthenticated(f"wrong or revoked agent credential for region {region!r}")
            if RegionStatus(row.status) == RegionStatus.DISABLED:
                raise PermissionDenied(f"region {region!r} is disabled")
            return AgentIdentity(region=row.name)

    # --- operator drain --------------------------------------------------------------------

    async def record_brownout(self, router: str, transitions: list[dict[str, object]]) -> None:
        """An audit entry per region that entered or left brownout in ``router``'s view."""
        if transitions:
            await asyncio.to_thread(self._record_brownout, router, transitions)

    def _record_brownout(self, router: str, transitions: list[dict[str, object]]) -> None:
        with self._sessions.begin() as session:
            actor = f"router:{router}"[:128]  # the column's width; the detail has it all
            for t in transitions:
                detail = {k: v for k, v in t.items() if k not in ("region", "entered")}
                detail["router"] = router
                session.add(
                    AuditEntry(
                        actor=actor,
                        action="brownout_enter" if t["entered"] else "brownout_leave",
                        entity="region",
                        entity_key=str(t["region"]),
                        detail=detail,
                    )
                )
            self.writes += 1

    async def set_draining(self, region: str, draining: bool, *, actor: str) -> str:
        """Set the region's status to draining (or back to active); returns the new status."""
        return await asyncio.to_thread(self._set_draining, region, draining, actor)

    def _set_draining(self, region: str, draining: bool, actor: str) -> str:
        with self._sessions.begin() as session:
            row = session.scalar(sa.select(Region).where(Region.name == region))
            if row is None:
                raise NotFound(f"region {region!r} does not exist")
            current = RegionStatus(row.status)
            if current == RegionStatus.DISABLED:
                raise PermissionDenied(f"region {region!r} is disabled; enable it first")
            target = RegionStatus.DRAINING if draining else RegionStatus.ACTIVE
            if current != target:
                row.status = target
                session.add(
                    AuditEntry(
                        actor=actor,
                        action="drain" if draining else "undrain",
                        entity="region",
                        entity_key=region,
                        detail={"from": current.value, "to": target.value},
                    )
                )
                self.writes += 1
            return target.value
