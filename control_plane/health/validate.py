"""Checks on agent messages: a malformed one is refused with a message naming the field.

Raises :class:`meridian.errors.InvalidInput` (gRPC INVALID_ARGUMENT for that one
stream). Kept cheap: it runs on every report.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from meridian.errors import InvalidInput
from proto import region_pb2 as pb

__all__ = ["MAX_GPUS", "MAX_WORKERS", "validate_register", "validate_report"]

MAX_GPUS = 256
MAX_WORKERS = 1024
_MAX_NAME = 64


def validate_register(message: pb.Register) -> None:
    if not message.region or len(message.region) > _MAX_NAME:
        raise InvalidInput("register.region must be a region name of 1 to 64 characters")
    if len(message.gpus) > MAX_GPUS:
        raise InvalidInput(f"register.gpus lists {len(message.gpus)} GPUs (at most {MAX_GPUS})")
    seen: set[int] = set()
    for gpu in message.gpus:
        if gpu.index in seen:
            raise InvalidInput(f"register.gpus lists GPU index {gpu.index} twice")
        seen.add(gpu.index)


def _bad(value: float, low: float, high: float) -> bool:
    return not (low <= value <= high) or math.isnan(value)


def validate_report(report: pb.Report, inventory: Collection[int]) -> None:
    """``inventory``: the GPU indices registered on this stream (empty: any)."""
    if len(report.gpus) > MAX_GPUS:
        raise InvalidInput(f"report.gpus has {len(report.gpus)} entries (at most {MAX_GPUS})")
    if len(report.workers) > MAX_WORKERS:
        raise InvalidInput(
            f"report.workers has {len(report.workers)} entries (at most {MAX_WORKERS})"
        )
    seen: set[int] = set()
    for gpu in report.gpus:
        i = gpu.index
        if i in seen:
            raise InvalidInput(f"report.gpus lists GPU {i} twice")
        seen.add(i)
        if inventory and i not in inventory:
            raise InvalidInput(f"report.gpus[{i}]: GPU {i} is not in the registered inventory")
        if _bad(gpu.utilization, 0.0, 100.0):
            raise InvalidInput(f"report.gpus[{i}].utilization must be 0..100 percent")
        if _bad(gpu.temperature_c, -50.0, 200.0):
            raise InvalidInput(f"report.gpus[{i}].temperature_c must be -50..200")
        if _bad(gpu.power_w, 0.0, 10_000.0):
            raise InvalidInput(f"report.gpus[{i}].power_w must be 0..10000")
        if gpu.memory_total_bytes and gpu.memory_used_bytes > gpu.memory_total_bytes:
            raise InvalidInput(f"report.gpus[{i}].memory_used_bytes exceeds memory_total_bytes")
    workers: set[str] = set()
    for w in report.workers:
        wid = w.worker_id
        if not wid or len(wid) > 128:
            raise InvalidInput("report.workers[].worker_id must be 1 to 128 characters")
        if wid in workers:
            raise InvalidInput(f"report.workers lists worker {wid!r} twice")
        workers.add(wid)
        if not w.endpoint.startswith(("http://", "https://")):
            raise InvalidInput(f"report.workers[{wid}].endpoint must be an http(s) URL")
        for name in ("throughput_rps", "capacity_rps", "latency_p50_ms", "latency_p99_ms"):
            if _bad(getattr(w, name), 0.0, 1e9):
                raise InvalidInput(f"report.workers[{wid}].{name} must be a finite value >= 0")
        for g in w.gpu_indices:
            if seen and g not in seen:
                raise InvalidInput(f"report.workers[{wid}] runs on GPU {g}, which is not reported")
