"""What the registry accepts and returns: Create / Update / Public shapes per resource.

Field limits live here, so bad input becomes a 422 that names the field before
any code runs. The registry core takes and returns these; REST (and later gRPC)
only convert.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from control_plane.db.models import ModelFormat, RegionStatus
from meridian.errors import InvalidInput

__all__ = [
    "DATATYPES",
    "ApiError",
    "ApiKeyCreate",
    "ApiKeyCreated",
    "ApiKeyPublic",
    "ApiKeyUpdate",
    "AuditPublic",
    "DemandAccepted",
    "DemandCreate",
    "DeploymentCreate",
    "DeploymentPublic",
    "DeploymentUpdate",
    "ErrorField",
    "ModelCreate",
    "ModelPublic",
    "ModelUpdate",
    "Page",
    "RegionCreate",
    "RegionCreated",
    "RegionPublic",
    "RegionUpdate",
    "ScalingDecisionPublic",
    "ScalingPublic",
    "Scope",
    "TensorSpec",
    "TokenCreate",
    "TokenCreated",
    "TokenPublic",
    "TokenRotate",
    "VariantCreate",
    "VariantPublic",
    "VersionCreate",
    "VersionPublic",
    "VersionUpdate",
]

T = TypeVar("T")

# names travel in URL paths (also the OIP ``/v2/models/{name}`` paths): keep them URL-safe
ModelName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.-]*$")]
VersionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$")]
VariantName = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
RegionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")]
Description = Annotated[str, Field(max_length=1024)]
Scope = Literal["admin", "read", "agent"]

# the Open Inference Protocol (KServe v2) tensor data types
DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)
Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer: take it as 3 (3.5 stays an error)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# integers as JSON Schema means them: 3 or 3.0, never "3" or true (the bounds come
# before the validator, so that the document states them as minimum/maximum)
GpuCount = Annotated[int, Field(ge=0, le=1_000_000), BeforeValidator(_integral)]
Replicas = Annotated[int, Field(ge=0, le=10_000), BeforeValidator(_integral)]


class _Strict(BaseModel):
    """What clients send: no unknown fields, and no coercion (``"5"`` is no integer),
    so what the document calls an integer is one. Enum fields opt back into parsing
    their values (``Field(strict=False)``)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- errors -------------------------------------------------------------------


class ErrorField(BaseModel):
    """One rejected input of a request that failed validation."""

    field: str = Field(examples=["name (body)"])
    message: str = Field(examples=["String should match pattern '^[a-z0-9][a-z0-9-]*$'"])


class ApiError(BaseModel):
    """Every error answer of the admin API, validation errors included."""

    error: str = Field(
        description="a stable code: unparseable_body, invalid_input, unauthenticated, "
        "permission_denied, not_found, method_not_allowed, conflict, precondition_failed, "
        "payload_too_large, precondition_required, unavailable, internal",
        examples=["not_found"],
    )
    detail: str = Field(
        description="what was wrong, for a person", examples=["model 'x' not found"]
    )
    retry_after: float | None = Field(
        default=None, description="seconds to wait before retrying (with a Retry-After header)"
    )
    fields: list[ErrorField] | None = Field(
        default=None, description="the rejected inputs (validation errors only)"
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# --- models -----------------------------------------------------------------


class ModelCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "resnet50", "description": "image classifier"}]}
    )

    name: ModelName
    description: Description = ""


class ModelUpdate(_Strict):
    description: Description | None = None


class ModelPublic(BaseModel):
    name: str
    description: str
    versions: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    row_version: int


# --- versions ---------------------------------------------------------------


class TensorSpec(_Strict):
    name: str = Field(min_length=1, max_length=128)
    datatype: Datatype
    # -1 marks a dynamic dimension (e.g. the batch)
    # at most 2**53 - 1: a bound a JSON number (a double) states exactly
    shape: list[Annotated[int, Field(ge=-1, le=2**53 - 1), BeforeValidator(_integral)]] = Field(
        max_length=16
    )


def _unique_names(specs: list[TensorSpec] | None, what: str) -> list[TensorSpec] | None:
    if specs is not None:
        names = [s.name for s in specs]
        if len(names) != len(set(names)):
            # a rule the document cannot state: 400, not 422 (which means "not as documented")
            raise InvalidInput(f"{what} tensor names must be unique")
    return specs


class VersionCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "version": "1",
                    "format": "onnx",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
                    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 1000]}],
                }
            ]
        }
    )

    version: VersionName
    format: ModelFormat = Field(strict=False)
    inputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)

    @field_validator("inputs", "outputs")
    @classmethod
    def _names(cls, v: list[TensorSpec]) -> list[TensorSpec]:
        _unique_names(v, "signature")
        return v


class VersionUpdate(_Strict):
    format: ModelFormat | None = Field(default=None, strict=False)
    inputs: list[TensorSpec] | None = Field(default=None, min_length=1, max_length=64)
    outputs: list[TensorSpec] | None = Field(default=None, min_length=1, max_length=64)

    @field_validator("inputs", "outputs")
    @classmethod
    def _names(cls, v: list[TensorSpec] | None) -> list[TensorSpec] | None:
        return _unique_names(v, "signature")


class VersionPublic(BaseModel):
    model: str
    version: str
    format: ModelFormat
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    artifact_uri: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    variants: list[str]
    created_at: dt.datetime
    updated_at: dt.datetime
    row_version: int


# --- variants ---------------------------------------------------------------


class VariantCreate(_Strict):
    name: VariantName = Field(description="e.g. int8 (CPU) or fp16 (GPU)")
    description: Description = ""
    max_abs_error: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class VariantPublic(BaseModel):
    model: str
    version: str
    name: str
    description: str
    max_abs_error: float | None
    artifact_uri: str | None
    artifact_sha256: str | None
    artifact_size: int | None
    created_at: dt.datetime


# --- regions ----------------------------------------------------------------


class RegionCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "eu-west",
                    "provider": "gcp",
                    "lat": 50.1,
                    "lon": 8.7,
                    "gpu_type": "L4",
                    "gpu_count": 8,
                }
            ]
        }
    )

    name: RegionName
    provider: str = Field(default="", max_length=32)
    lat: float = Field(ge=-90, le=90, allow_inf_nan=False)
    lon: float = Field(ge=-180, le=180, allow_inf_nan=False)
    gpu_type: str = Field(default="", max_length=64)
    gpu_count: GpuCount = 0
    status: RegionStatus = Field(default=RegionStatus.ACTIVE, strict=False)


class RegionUpdate(_Strict):
    provider: str | None = Field(default=None, max_length=32)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    gpu_type: str | None = Field(default=None, max_length=64)
    gpu_count: GpuCount | None = None
    status: RegionStatus | None = Field(default=None, strict=False)


class RegionPublic(BaseModel):
    name: str
    provider: str
    lat: float
    lon: float
    gpu_type: str
    gpu_count: int
    status: RegionStatus
    created_at: dt.datetime
    updated_at: dt.datetime
    row_version: int


class RegionCreated(RegionPublic):
    """The region and its agent credential, shown this once (only a hash is kept)."""

    agent_credential: str


# --- deployments ------------------------------------------------------------


class DeploymentCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "resnet50",
                    "version": "1",
                    "region": "eu-west",
                    "min_replicas": 1,
                    "max_replicas": 4,
                }
            ]
        }
    )

    model: ModelName
    version: VersionName
    region: RegionName
    variant: VariantName | None = None
    min_replicas: Replicas = 1
    max_replicas: Replicas = 1
    traffic_weight: float = Field(default=1.0, ge=0, le=1_000_000)
    degrade_to: VariantName | None = Field(
        default=None,
        description="a variant of this version (e.g. int8) that serves the region's overflow "
        "while it is saturated; its accuracy against the base is on the variant's record",
    )

    @model_validator(mode="after")
    def _replicas(self) -> DeploymentCreate:
        if self.max_replicas < self.min_replicas:
            raise InvalidInput("max_replicas must be >= min_replicas")
        return self


class DeploymentUpdate(_Strict):
    variant: VariantName | None = None
    min_replicas: Replicas | None = None
    max_replicas: Replicas | None = None
    traffic_weight: float | None = Field(default=None, ge=0, le=1_000_000)
    # pin: no autoscaling, run ``pinned_replicas`` workers (required when pinning)
    autoscale_pinned: bool | None = None
    pinned_replicas: Replicas | None = None
    degrade_to: VariantName | None = None  # null: no brownout


class DeploymentPublic(BaseModel):
    id: int
    model: str
    version: str
    region: str
    variant: str | None
    min_replicas: int
    max_replicas: int
    traffic_weight: float
    autoscale_pinned: bool = False
    pinned_replicas: int | None = None
    degrade_to: str | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
    row_version: int


class ScalingDecisionPublic(BaseModel):
    at_s_ago: float  # seconds before this answer
    current: int
    desired: int
    reason: str
    panic: bool
    stable_demand: float  # in workers
    panic_demand: float


class ScalingPublic(BaseModel):
    """A deployment's replicas as the autoscaler sees them, and why."""

    deployment_id: int
    model: str
    version: str
    region: str
    min_replicas: int
    max_replicas: int
    autoscale_pinned: bool
    pinned_replicas: int | None
    autoscaler_running: bool
    # whether this replica leads (only the leader decides); None without the fleet plane
    autoscaler_leading: bool | None = None
    ready_replicas: int | None  # routable workers in the latest snapshot
    desired_replicas: int | None
    last_decision: ScalingDecisionPublic | None
    decisions: list[ScalingDecisionPublic]  # the latest changes, newest first
    ready_after_s: list[float]  # scale-up decision -> capacity serving, newest first
    cold_starts_s: list[float]  # zero -> first worker serving, newest first


class DemandCreate(_Strict):
    region: RegionName | None = None  # where the client is best served, if the router knows


class DemandAccepted(BaseModel):
    model: str
    deployments: int  # how many deployments of the model could take the demand


# a count a router sends (a JSON number with an integral value, 3.0 too)
Count = Annotated[int, Field(ge=0, le=10**9), BeforeValidator(_integral)]


class TrafficFlow(_Strict):
    """Requests a router served from one client area (its grid cell) in one region."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    region: RegionName
    requests: Count


class RegionStreams(_Strict):
    """Streamed generations a router relayed from a region, and their mean time to first
    token (from arrival at the router)."""

    region: RegionName
    streams: Count
    ttft_ms: float = Field(ge=0, le=3_600_000)


class BrownoutTransition(_Strict):
    """A region that entered (or left) brownout for a model in a router's view: its overflow
    went to (or no longer goes to) the deployment's ``degrade_to`` variant."""

    region: RegionName
    model: ModelName
    variant: VariantName
    entered: bool
    load: float = Field(ge=0, le=1_000_000)  # the region's load when it happened


class TrafficReportCreate(_Strict):
    """What a router served over its last ``interval_s`` seconds, for the console's map."""

    router: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    interval_s: float = Field(gt=0, le=600)
    flows: list[TrafficFlow] = Field(default_factory=list, max_length=10_000)
    regions: list[RegionStreams] = Field(default_factory=list, max_length=1_000)
    brownout: list[BrownoutTransition] = Field(default_factory=list, max_length=1_000)


class TrafficAccepted(BaseModel):
    router: str
    flows: int


# --- tokens and audit -------------------------------------------------------


# a token's lifetime: a minute to ten years
TokenLifetime = Annotated[
    int, Field(ge=60, le=10 * 366 * 86400, examples=[2592000]), BeforeValidator(_integral)
]


class TokenCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "ci", "scopes": ["read"], "expires_in_s": 2592000}]
        }
    )

    name: str = Field(min_length=1, max_length=128, pattern=r"^[\w.@:-]+$")
    scopes: list[Scope] = Field(min_length=1, max_length=3)
    expires_in_s: TokenLifetime | None = Field(
        default=None, description="seconds until the token stops working; null: never"
    )

    @field_validator("scopes")
    @classmethod
    def _dedupe(cls, v: list[Scope]) -> list[Scope]:
        return sorted(set(v))


class TokenPublic(BaseModel):
    id: int
    name: str
    scopes: list[Scope]
    created_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None = None
    # when it last authenticated a request, to the minute
    last_used_at: dt.datetime | None = None


class TokenRotate(_Strict):
    expires_in_s: TokenLifetime | None = Field(
        default=None, description="the new token's lifetime; null: never expires"
    )


class TokenCreated(TokenPublic):
    """The token itself, shown this once (only a hash is kept)."""

    token: str


# --- end users' API keys ------------------------------------------------------

KeyName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][\w.@:-]*$")]
RatePerSecond = Annotated[float, Field(gt=0, le=1_000_000, allow_inf_nan=False)]
Burst = Annotated[float, Field(ge=1, le=10_000_000, allow_inf_nan=False)]
TokensPerMinute = Annotated[float, Field(ge=1, le=1e12, allow_inf_nan=False)]
# as the x-meridian-deadline-ms header allows (meridian.deadline.MAX_DEADLINE_MS)
DeadlineMs = Annotated[float, Field(gt=0, le=86_400_000, allow_inf_nan=False)]
KeyPriority = Literal["interactive", "batch"]
PRIORITY_HELP = (
    "request class under overload: 'batch' is refused (503, Retry-After) while the fleet "
    "still admits 'interactive'"
)
DEADLINE_HELP = (
    "deadline in milliseconds of a request that carries no x-meridian-deadline-ms "
    "header; null: none"
)


class ApiKeyCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"name": "acme", "rate_per_s": 20, "burst": 40, "models": ["resnet50"]}]
        }
    )

    name: KeyName
    rate_per_s: RatePerSecond = Field(description="sustained requests per second")
    burst: Burst = Field(description="requests allowed at once above the sustained rate")
    models: list[ModelName] = Field(
        default_factory=list, max_length=256, description="models it may call; empty: all"
    )
    tokens_per_minute: TokensPerMinute | None = Field(
        default=None, description="generation tokens (prompt + completion) per minute; null: none"
    )
    priority: KeyPriority = Field(default="interactive", description=PRIORITY_HELP)
    deadline_ms: DeadlineMs | None = Field(default=None, description=DEADLINE_HELP)

    @field_validator("models")
    @classmethod
    def _dedupe_models(cls, v: list[str]) -> list[str]:
        return sorted(set(v))


class ApiKeyUpdate(_Strict):
    rate_per_s: RatePerSecond | None = None
    burst: Burst | None = None
    models: list[ModelName] | None = Field(default=None, max_length=256)
    tokens_per_minute: TokensPerMinute | None = None
    priority: KeyPriority | None = Field(default=None, description=PRIORITY_HELP)
    deadline_ms: DeadlineMs | None = Field(default=None, description=DEADLINE_HELP)

    @field_validator("models")
    @classmethod
    def _dedupe_models(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else sorted(set(v))


class ApiKeyPublic(BaseModel):
    name: str
    prefix: str
    rate_per_s: float
    burst: float
    models: list[str]
    tokens_per_minute: float | None = None
    priority: KeyPriority = "interactive"
    deadline_ms: float | None = None
    created_at: dt.datetime
    created_by: str
    revoked_at: dt.datetime | None
    row_version: int


class ApiKeyUsage(BaseModel):
    """Tokens the routers counted for a key since it was issued (from their Redis)."""

    name: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ApiKeyCreated(ApiKeyPublic):
    """The key itself, shown this once (only a hash is kept)."""

    key: str


class AuditPublic(BaseModel):
    id: int
    at: dt.datetime
    actor: str
    action: str
    entity: str
    entity_key: str
    detail: dict[str, Any]
