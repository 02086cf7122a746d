"""The routing snapshot: everything a router needs to choose a region, nothing more.

The control plane's leader publishes a new snapshot whenever the fleet changes
(region or worker state, deployments, load); routers follow it through the
coordination backend (etcd watch / in-process) or the HTTP long-poll, and keep
the last good one on disk. It is plain data with a stable JSON form.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import orjson

__all__ = [
    "DeploymentRoute",
    "HealthState",
    "RegionView",
    "RoutingSnapshot",
    "WorkerView",
]


class HealthState(enum.StrEnum):
    """State of a worker or a region. Only ``healthy`` and ``degraded`` receive traffic."""

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    DOWN = "down"
    DRAINING = "draining"

    @property
    def routable(self) -> bool:
        return self in (HealthState.HEALTHY, HealthState.DEGRADED)


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the router sees it."""

    worker_id: str
    endpoint: str  # base URL of the worker's OIP v2 REST server, e.g. http://127.0.0.1:8101
    state: HealthState
    # loaded model keys "name:version"; a brownout reserve worker (a deployment's
    # ``degrade_to`` variant) reports "name:version:variant" and takes only overflow
    models: tuple[str, ...]
    queue_depth: int = 0
    in_flight: int = 0
    throughput_rps: float = 0.0  # recent served requests per second
    latency_p50_ms: float = 0.0
    capacity_rps: float = 0.0  # sustainable requests/s as the worker measured it (0: unknown)
    grpc_endpoint: str = ""  # host:port of the worker's OIP v2 gRPC server, if any
    # generative models (zero for others): sequences, KV cache, token rates
    running_seqs: int = 0
    waiting_seqs: int = 0
    kv_blocks_used: int = 0
    kv_blocks_free: int = 0
    kv_block_size: int = 0  # tokens per KV block
    prefill_tokens_per_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    prefix_hit_rate: float = 0.0

    @property
    def kv_occupancy(self) -> float:
        """Share of the worker's KV blocks in use (0 when it reports none)."""
        total = self.kv_blocks_used + self.kv_blocks_free
        return self.kv_blocks_used / total if total else 0.0


@dataclass(frozen=True, slots=True)
class RegionView:
    """One region: where it is, how healthy and how loaded."""

    name: str
    state: HealthState
    lat: float
    lon: float
    gpu_type: str = ""
    gpu_count: int = 0
    healthy_gpus: int = 0
    capacity_rps: float = 0.0  # sustainable requests/s over all ready workers
    queue_depth: int = 0
    in_flight: int = 0
    workers: tuple[WorkerView, ...] = ()
    # wall-clock time since when no agent reports on this region (0: monitored). Set on a
    # region published down only for want of reports: its workers may well still serve,
    # and routers keep their last view of it while their own observations agree
    unmonitored_since: float = 0.0

    def serves(self, model: str) -> bool:
        """True when a routable worker in this region has any version of ``model`` loaded."""
        prefix = model + ":"
        return any(
            w.state.routable and any(m == model or m.startswith(prefix) for m in w.models)
            for w in self.workers
        )


@dataclass(frozen=True, slots=True)
class DeploymentRoute:
    """A model version placed in a region with a traffic weight (canary splits)."""

    model: str
    version: str
    region: str
    weight: float = 1.0
    variant: str = ""
    # a rollout comparing outputs: the share of the other versions' answered requests in
    # this region that routers also send here (replies compared, then discarded), and how
    # replies are compared ("cosine" for embeddings, "disagreement" for classifiers)
    mirror: float = 0.0
    compare: str = ""
    # the quantized variant that takes the region's overflow while it is saturated ("": none)
    degrade_to: str = ""


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """A versioned, immutable view of the fleet. ``version`` only ever grows."""

    version: int
    generated_at: float  # wall-clock seconds since the epoch (for age across hosts)
    regions: tuple[RegionView, ...] = ()
    deployments: tuple[DeploymentRoute, ...] = ()
    # router replicas that reported to the control plane lately (0: unknown): a router
    # that has not yet measured its share of the fleet's traffic assumes 1 / routers
    routers: int = 0
    _by_name: dict[str, RegionView] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name.update({r.name: r for r in self.regions})

    def region(self, name: str) -> RegionView | None:
        return self._by_name.get(name)

    def routable_regions(self) -> Iterable[RegionView]:
        return (r for r in self.regions if r.state.routable)

    # --- JSON form -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_by_name", None)
        return d

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoutingSnapshot:
        regions = tuple(
            RegionView(
                **{
                    **_known(RegionView, r),
                    "state": HealthState(r["state"]),
                    "workers": tuple(
                        WorkerView(
                            **{
                                **_known(WorkerView, w),
                                "state": HealthState(w["state"]),
                                "models": tuple(w["models"]),
                            }
                        )
                        for w in r.get("workers", ())
                    ),
                }
            )
            for r in data.get("regions", ())
        )
        deployments = tuple(
            DeploymentRoute(**_known(DeploymentRoute, d)) for d in data.get("deployments", ())
        )
        return cls(
            version=int(data["version"]),
            generated_at=float(data["generated_at"]),
            regions=regions,
            deployments=deployments,
            routers=int(data.get("routers", 0)),
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> RoutingSnapshot:
        return cls.from_dict(orjson.loads(raw))


def _known(kind: type, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``data`` that ``kind`` has: a router reads snapshots from a newer
    control plane during a rolling upgrade, and a field it does not know yet is not an
    error."""
    names = _field_names(kind)
    return {k: v for k, v in data.items() if k in names}


@functools.cache
def _field_names(kind: type) -> frozenset[str]:
    return frozenset(f.name for f in fields(kind))
