"""A served model's configuration and statistics, as the protocol's JSON shapes.

Both transports answer from these dictionaries: REST sends them as they are
(``GET /v2/models/{name}/config``, ``GET /v2/models/{name}/stats``), gRPC parses
them into ``ModelConfig`` and ``ModelStatistics`` messages. Field names follow
Triton's model configuration and statistics extension, which tritonclient reads.
"""

from __future__ import annotations

import time

from worker.generative import TEXT_INPUT, TEXT_OUTPUT, GenerativeModel
from worker.metrics import WorkerMetrics
from worker.repository import LoadedModel, Served, is_batchable
from worker.settings import WorkerSettings
from worker.tensors import TensorSpec

__all__ = ["model_config", "model_statistics"]

_NS = 1_000_000_000


def _data_type(datatype: str) -> str:
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


def _tensor(spec: TensorSpec, batched: bool) -> dict[str, object]:
    dims = list(spec.shape) if spec.shape is not None else [-1]
    if batched:
        dims = dims[1:]
    return {"name": spec.name, "data_type": _data_type(spec.datatype), "dims": dims}


def _device_kind(device: str) -> str:
    return "KIND_GPU" if device.startswith("cuda") else "KIND_CPU"


def model_config(model: Served, settings: WorkerSettings) -> dict[str, object]:
    common: dict[str, object] = {
        "name": model.name,
        "platform": model.platform,
        "backend": "meridian",
        "instance_group": [{"name": model.name, "count": 1, "kind": _device_kind(model.device)}],
    }
    if isinstance(model, GenerativeModel):
        return common | {
            "max_batch_size": 0,
            "input": [{"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [1]}],
            "output": [{"name": TEXT_OUTPUT, "data_type": "TYPE_STRING", "dims": [-1]}],
            "model_transaction_policy": {"decoupled": True},
            "parameters": {
                "variant": {"string_value": model.variant},
                "max_model_len": {"string_value": str(model.engine.max_model_len)},
            },
        }
    batched = is_batchable(model.engine)
    config = common | {
        "max_batch_size": settings.max_batch_size if batched else 0,
        "input": [_tensor(s, batched) for s in model.engine.inputs],
        "output": [_tensor(s, batched) for s in model.engine.outputs],
        "parameters": {"variant": {"string_value": model.variant}},
    }
    if batched:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000)
        }
    return config


def _duration(count: float, seconds: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(seconds * _NS)}


def _epoch_ms(monotonic: float) -> int:
    """A ``time.monotonic()`` reading as milliseconds since the epoch (0 stays 0)."""
    if not monotonic:
        return 0
    return round((time.time() - (time.monotonic() - monotonic)) * 1000)


def model_statistics(model: Served, metrics: WorkerMetrics) -> dict[str, object]:
    if isinstance(model, GenerativeModel):
        t = model.tally
        return {
            "name": model.name,
            "version": model.version,
            "last_inference": _epoch_ms(t.last_completed),
            "inference_count": t.ok,
            "execution_count": t.ok,
            "inference_stats": {
                "success": _duration(t.ok, t.ok_s),
                "fail": _duration(t.failed, t.failed_s),
                "queue": _duration(0, 0),
                "compute_input": _duration(0, 0),
                "compute_infer": _duration(t.ok, t.ok_s),
                "compute_output": _duration(0, 0),
                "cache_hit": _duration(0, 0),
                "cache_miss": _duration(0, 0),
            },
            "batch_stats": [],
        }
    return _tensor_statistics(model, metrics)


def _tensor_statistics(model: LoadedModel, metrics: WorkerMetrics) -> dict[str, object]:
    label = model.label
    stats = metrics.model(label)
    queue = metrics.queue_time.labels(label)
    compute = metrics.compute_time.labels(label)
    request = metrics.request_time.labels(label)
    return {
        "name": model.name,
        "version": model.version,
        "last_inference": _epoch_ms(stats.last_completed),
        "inference_count": stats.rows,
        "execution_count": stats.batches,
        "inference_stats": {
            "success": _duration(stats.requests, request.total),
            "fail": _duration(stats.failures, 0),
            "queue": _duration(int(queue.counts.sum()), queue.total),
            "compute_input": _duration(0, 0),
            "compute_infer": _duration(int(compute.counts.sum()), compute.total),
            "compute_output": _duration(0, 0),
            "cache_hit": _duration(0, 0),
            "cache_miss": _duration(0, 0),
        },
        "batch_stats": [
            {
                "batch_size": size,
                "compute_input": _duration(0, 0),
                "compute_infer": _duration(runs, seconds),
                "compute_output": _duration(0, 0),
            }
            for size, (runs, seconds) in sorted(stats.batch_runs.items())
        ],
    }
