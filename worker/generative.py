"""Generative models: a :class:`~worker.generation.types.GenerationEngine` served by
name and version, and the one place a request becomes a measured token stream.

Every transport (the OpenAI routes, the OIP generate routes, gRPC
``ModelStreamInfer``) turns its request into prompt token ids and
:class:`SamplingParams`, then calls :func:`start_stream`: the checks that can fail
run before the first token (so bad input is a 4xx, not a broken stream), and the
stream it returns records time to first token, time per output token and
end-to-end latency. Closing the stream early (a client that went away) closes the
engine's iterator, which aborts the sequence.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meridian.errors import InvalidInput, UpstreamTimeout
from worker.generation.types import GenerationEngine, SamplingParams, TokenEvent
from worker.metrics import GenerationTally, WorkerMetrics
from worker.settings import WorkerSettings

__all__ = [
    "PLATFORM",
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "GenerativeModel",
    "open_generative",
    "sampling_params",
    "start_stream",
]

PLATFORM = "meridian_generative"
TEXT_INPUT = "text_input"
TEXT_OUTPUT = "text_output"
MAX_STOP_STRINGS = 4


@dataclass(eq=False)
class GenerativeModel:
    name: str
    version: str
    variant: str
    engine: GenerationEngine
    source: str
    sha256: str | None = None
    device: str = "cpu"
    tally: GenerationTally = field(default_factory=GenerationTally)
    platform: str = PLATFORM

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    def metadata(self, versions: list[str]) -> dict[str, object]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.platform,
            "inputs": [{"name": TEXT_INPUT, "datatype": "BYTES", "shape": [1]}],
            "outputs": [{"name": TEXT_OUTPUT, "datatype": "BYTES", "shape": [-1]}],
            "parameters": {
                "variant": self.variant,
                "device": self.device,
                "max_model_len": self.engine.max_model_len,
                "decoupled": True,
            },
        }


def open_generative(
    folder: Path, settings: WorkerSettings, name: str
) -> tuple[GenerationEngine, str]:
    """The generation engine for a model folder (not started yet) and its device.
    Blocking: loads the weights."""
    import torch

    from worker.generation.factory import open_generation_engine
    from worker.generation.settings import GenerationSettings

    generation = GenerationSettings(
        block_size=settings.block_size,
        kv_cache_tokens=settings.kv_cache_tokens,
        max_num_seqs=settings.max_num_seqs,
        max_batched_tokens=settings.max_batched_tokens,
        prefix_caching=settings.prefix_caching,
        max_model_len=settings.max_model_len,
        gpu_memory_fraction=settings.gpu_memory_fraction,
        threads=settings.engine_threads,
    )
    device = "cuda" if settings.use_gpu and torch.cuda.is_available() else "cpu"
    try:
        engine = open_generation_engine(folder, generation, name=name, device=device)
    except (ValueError, FileNotFoundError) as exc:  # a checkpoint the engine cannot serve
        raise InvalidInput(f"cannot serve '{folder.name}' as a generative model: {exc}") from None
    return engine, device


def _number(values: Mapping[str, Any], key: str, kind: type, lo: float, hi: float) -> Any:
    value = values[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"parameter '{key}' must be a number")
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise InvalidInput(f"parameter '{key}' must be an integer")
    if not lo <= value <= hi:
        raise InvalidInput(f"parameter '{key}' must be between {lo:g} and {hi:g}, got {value}")
    return kind(value)


def sampling_params(values: Mapping[str, Any]) -> SamplingParams:
    """Sampling parameters from a request's ``parameters`` (the OIP transports);
    unknown keys are ignored, as the protocol leaves ``parameters`` open."""
    kwargs: dict[str, Any] = {}
    if values.get("max_tokens") is not None:
        kwargs["max_tokens"] = _number(values, "max_tokens", int, 1, 1 << 20)
    if values.get("temperature") is not None:
        kwargs["temperature"] = _number(values, "temperature", float, 0, 100)
    if values.get("top_p") is not None:
        kwargs["top_p"] = _number(values, "top_p", float, 0, 1)
        if kwargs["top_p"] == 0:
            raise InvalidInput("parameter 'top_p' must be above 0")
    if values.get("top_k") is not None:
        kwargs["top_k"] = _number(values, "top_k", int, -1, 1 << 20)
        kwargs["top_k"] = max(0, kwargs["top_k"])
    if values.get("seed") is not None:
        kwargs["seed"] = _number(values, "seed", int, -(1 << 63), (1 << 64) - 1)
    stop = values.get("stop")
    if stop is not None:
        kwargs["stop"] = stop_strings(stop, "stop")
    if values.get("ignore_eos") is not None:
        if not isinstance(values["ignore_eos"], bool):
            raise InvalidInput("parameter 'ignore_eos' must be true or false")
        kwargs["ignore_eos"] = values["ignore_eos"]
    return SamplingParams(**kwargs)


def stop_strings(stop: object, where: str) -> tuple[str, ...]:
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise InvalidInput(f"'{where}' must be a non-empty string or a list of them")
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidInput(f"'{where}' takes at most {MAX_STOP_STRINGS} strings")
    return tuple(stop)


def check_request(
    model: GenerativeModel, prompt_ids: Sequence[int], params: SamplingParams
) -> SamplingParams:
    """Refuse what the model cannot answer; ``params`` with max_tokens fitted in."""
    limit = model.engine.max_model_len
    if not prompt_ids:
        raise InvalidInput("the prompt is empty")
    if len(prompt_ids) >= limit:
        raise InvalidInput(
            f"the prompt has {len(prompt_ids)} tokens; model '{model.name}' takes at most "
            f"{limit} tokens in all (prompt and completion)"
        )
    room = limit - len(prompt_ids)
    if params.max_tokens > room:
        raise InvalidInput(
            f"max_tokens {params.max_tokens} does not fit: the prompt has {len(prompt_ids)} "
            f"tokens and model '{model.name}' takes at most {limit} tokens in all"
        )
    return params


def start_stream(
    model: GenerativeModel,
    prompt_ids: Sequence[int],
    params: SamplingParams,
    request_id: str,
    metrics: WorkerMetrics,
    deadline: float | None = None,
) -> AsyncGenerator[TokenEvent, None]:
    """Check the request, then the measured stream of its token events. One still
    queued at ``deadline`` (``time.monotonic()``) is dropped before its prefill (504,
    counted in ``meridian_worker_deadline_dropped_total``)."""
    check_request(model, prompt_ids, params)
    start = time.monotonic()
    # The engine checks the request when called, so its refusals come before any token.
    events = model.engine.generate(list(prompt_ids), params, request_id, deadline)
    return _measured(model, events, start, metrics)


async def _measured(
    model: GenerativeModel,
    events: AsyncIterator[TokenEvent],
    start: float,
    metrics: WorkerMetrics,
) -> AsyncGenerator[TokenEvent, None]:
    label = model.label
    first: float | None = None
    tokens = 0
    finish: str = "abort"
    try:
        async for event in events:
            now = time.monotonic()
            if event.token_id is not None and first is None:
                first = now
                metrics.ttft.labels(label).observe(now - start)
            tokens = event.completion_tokens
            if event.finish_reason is not None:
                finish = event.finish_reason
            yield event
    except UpstreamTimeout:
        if first is None:  # dropped in the queue: it never ran
            metrics.deadline_dropped.labels(label).inc()
        raise
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
        end = time.monotonic()
        if first is not None and tokens > 1:
            metrics.tpot.labels(label).observe((end - first) / (tokens - 1))
        metrics.e2e.labels(label).observe(end - start)
        metrics.generations.labels(label, finish).inc()
        model.tally.finished(end - start, ok=finish != "abort", now=end)
