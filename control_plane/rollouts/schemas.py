"""What clients send to and get from ``/v1/rollouts``, and what routers report."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from control_plane.schemas import ModelName, RegionName, VariantName, VersionName, _integral
from meridian.errors import InvalidInput
from meridian.figures import BUCKETS_MS

__all__ = [
    "ACTIVE_STATES",
    "FigureRow",
    "FiguresAccepted",
    "FiguresReport",
    "GateConfig",
    "RolloutCreate",
    "RolloutPublic",
    "RolloutState",
]

RolloutState = Literal["running", "promoting", "paused", "completed", "rolled_back", "aborted"]
ACTIVE_STATES: tuple[str, ...] = ("running", "promoting", "paused")

Share = Annotated[float, Field(gt=0, le=1, strict=False)]
Ratio = Annotated[float, Field(ge=1, le=1000, strict=False)]
Millis = Annotated[float, Field(ge=0, le=3_600_000, strict=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class GateConfig(_Strict):
    """What a canary step must show, per region, over its window, against the old version's
    figures in the same region and window."""

    min_requests: Annotated[int, BeforeValidator(_integral)] = Field(
        default=200, ge=20, le=10_000_000,
        description="requests the new version must have answered or failed in a region "
        "before any gate may pass (or fail)",
    )  # fmt: skip
    max_error_rate_increase: float = Field(
        default=0.01, ge=0, le=1, strict=False,
        description="the new version's error rate may exceed the old one's by this much",
    )  # fmt: skip
    max_p99_ratio: Ratio = Field(default=1.5, description="new p99 latency / old p99 latency")
    p99_slack_ms: Millis = Field(
        default=10.0, description="a p99 this much above the old one always passes the ratio"
    )
    max_p99_ms: Millis | None = Field(default=None, description="absolute p99 latency limit")
    max_ttft_p99_ratio: Ratio = Field(default=1.5, description="generative: time to first token")
    max_ttft_p99_ms: Millis | None = Field(default=None, description="absolute TTFT p99 limit")
    compare: Literal["auto", "none", "cosine", "disagreement"] = Field(
        default="auto",
        description="output drift on mirrored requests: cosine distance (embeddings), "
        "disagreement (classifiers), none; auto: cosine unless the model is generative",
    )
    mirror_share: float = Field(
        default=0.1, ge=0, le=1, strict=False,
        description="share of the old version's requests in a wave's regions also sent to "
        "the new version (replies compared, then discarded)",
    )  # fmt: skip
    min_mirrored: Annotated[int, BeforeValidator(_integral)] = Field(
        default=50, ge=10, le=10_000_000
    )
    max_drift: float = Field(
        default=0.05, ge=0, le=2, strict=False,
        description="mean cosine distance, or share of disagreements, allowed",
    )  # fmt: skip
    ready_timeout_s: float = Field(
        default=600, gt=0, le=86_400, strict=False,
        description="the new version's workers must serve in every region of a wave by then",
    )  # fmt: skip


class RolloutCreate(_Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model": "resnet50",
                    "from_version": "1",
                    "to_version": "2",
                    "steps": [0.01, 0.1, 0.5, 1.0],
                    "bake_s": 300,
                }
            ]
        }
    )

    model: ModelName
    from_version: VersionName
    to_version: VersionName
    variant: VariantName | None = Field(default=None, description="the new version's variant")
    waves: list[Annotated[list[RegionName], Field(min_length=1, max_length=100)]] | None = Field(
        default=None,
        max_length=100,
        description="regions per wave; default: the smallest region first, then by "
        "continent, the largest last",
    )
    steps: list[Share] = Field(
        default_factory=lambda: [0.01, 0.1, 0.5, 1.0],
        min_length=1,
        max_length=20,
        description="the new version's share of traffic at each step of a wave; the last must be 1",
    )
    bake_s: float = Field(default=300.0, ge=0.5, le=86_400, strict=False)
    gates: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _check(self) -> RolloutCreate:
        if self.steps[-1] != 1.0:
            raise InvalidInput("the last step must be 1 (all of a region's traffic)")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise InvalidInput("steps must increase")
        if self.from_version == self.to_version:
            raise InvalidInput("from_version and to_version must differ")
        if self.waves is not None:
            seen = [r for wave in self.waves for r in wave]
            if len(seen) != len(set(seen)):
                raise InvalidInput("a region may appear in one wave only, once")
        return self


class RolloutPublic(BaseModel):
    id: int
    model: str
    from_version: str
    to_version: str
    variant: str | None
    waves: list[list[str]]
    steps: list[float]
    bake_s: float
    gates: GateConfig
    state: RolloutState
    wave: int = Field(description="the wave in progress (0-based)")
    step: int = Field(description="the step in progress (0-based); -1: workers starting")
    share: float = Field(description="the new version's share in the current wave's regions")
    step_started_at: dt.datetime | None
    reason: str
    figures: dict[str, Any] = Field(
        description="per region of the current wave: the last gate figures and verdict"
    )
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None
    row_version: int


# integers as JSON Schema means them: 3 or 3.0 (control_plane.schemas)
Count = Annotated[int, Field(ge=0, le=10**15), BeforeValidator(_integral)]
Histogram = Annotated[list[Count], Field(max_length=len(BUCKETS_MS))]
ReportedVersion = Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")]
RouterName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class FigureRow(BaseModel):
    """One model version in one region, counted by one router since it started; the
    histograms hold one count per bucket of ``meridian.figures.BUCKETS_MS``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: ModelName
    version: ReportedVersion = Field(description="empty when the worker's was not known")
    region: RegionName
    requests: Count
    errors: Count
    latency: Histogram = Field(default_factory=list)
    ttft: Histogram = Field(default_factory=list)
    mirrored: Count = 0
    mirror_errors: Count = 0
    drift_sum: float = Field(default=0.0, ge=0, le=1e15)


class FiguresReport(BaseModel):
    """A router's cumulative figures (``router.figures``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    router: RouterName
    boot: RouterName
    figures: list[FigureRow] = Field(max_length=10_000)


class FiguresAccepted(BaseModel):
    rows: int
