"""The registry as the fleet plane needs it: plain data, loaded from SQL elsewhere."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meridian.keyring import ApiKeyGrant

__all__ = [
    "AgentIdentity",
    "CredentialCheck",
    "DeploymentRecord",
    "RegionRecord",
    "RegistryView",
]


@dataclass(frozen=True, slots=True)
class RegionRecord:
    name: str
    lat: float
    lon: float
    gpu_type: str = ""
    gpu_count: int = 0
    status: str = "active"  # active | draining | disabled


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    model: str
    version: str
    region: str
    variant: str = ""
    min_replicas: int = 1
    max_replicas: int = 1
    traffic_weight: float = 1.0
    artifact_url: str = ""
    artifact_sha256: str = ""
    id: int = 0  # the registry's deployment id
    autoscale_pinned: bool = False
    pinned_replicas: int | None = None
    # brownout: the variant that takes the region's overflow while it is saturated, run as
    # one reserve worker beside the deployment's own (its artifact as above for the base)
    degrade_to: str = ""
    degrade_url: str = ""
    degrade_sha256: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.model, self.version, self.region)


@dataclass(frozen=True, slots=True)
class RegistryView:
    regions: tuple[RegionRecord, ...] = ()
    deployments: tuple[DeploymentRecord, ...] = ()
    api_keys: tuple[ApiKeyGrant, ...] = ()  # end users' keys that are not revoked

    def region(self, name: str) -> RegionRecord | None:
        return next((r for r in self.regions if r.name == name), None)

    def deployments_in(self, region: str) -> tuple[DeploymentRecord, ...]:
        return tuple(d for d in self.deployments if d.region == region)


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who an authenticated agent stream speaks for."""

    region: str


# (region name, credential) -> identity; raises meridian.errors.Unauthenticated when the
# credential is wrong, PermissionDenied when it was revoked or the region is disabled.
CredentialCheck = Callable[[str, str], Awaitable[AgentIdentity]]
