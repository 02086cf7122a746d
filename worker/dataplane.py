"""The worker's core: one object behind both the REST and the gRPC transport.

Transports decode requests into :mod:`worker.tensors` objects, call the
:class:`DataPlane`, and encode what it returns. Every check of a request
against the model's signature happens here, so both transports answer bad
input the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

import numpy as np

from meridian.errors import InvalidInput, Unavailable
from worker.access import artifact_transport
from worker.archives import is_archive
from worker.artifacts import ArtifactCache, sha256_file
from worker.batcher import BatchPolicy
from worker.engines.base import Engine, open_engine
from worker.generation.types import GenerationEngine, SamplingParams, TokenEvent
from worker.generative import GenerativeModel, start_stream
from worker.metrics import WorkerMetrics
from worker.probes import ProbeMismatch
from worker.repository import (
    LoadedModel,
    LoadRequest,
    ModelRepository,
    Served,
    local_path,
)
from worker.settings import WorkerSettings
from worker.tensors import InferenceRequest, InferenceResponse, TensorSpec

__all__ = ["EXTENSIONS", "SERVER_VERSION", "DataPlane", "Queued"]

SERVER_VERSION = "0.1.0"
EXTENSIONS = [
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "generate",
]


def _fmt_shape(shape: tuple[int, ...] | None) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]" if shape is not None else "[any]"


def check_inputs(request: InferenceRequest, specs: list[TensorSpec]) -> dict[str, np.ndarray]:
    """The request's arrays by name, checked against the model's input signature."""
    given: dict[str, np.ndarray] = {}
    for t in request.inputs:
        if t.name in given:
            raise InvalidInput(f"input '{t.name}' is given more than once")
        given[t.name] = t.array
    datatypes = {t.name: t.datatype for t in request.inputs}
    expected = {s.name for s in specs}
    for name in given:
        if name not in expected:
            names = ", ".join(f"'{n}'" for n in sorted(expected))
            raise InvalidInput(f"unknown input '{name}'; the model's inputs are {names}")
    rows: int | None = None
    for spec in specs:
        if spec.name not in given:
            raise InvalidInput(
                f"missing input '{spec.name}' ({spec.datatype} {_fmt_shape(spec.shape)})"
            )
        array = given[spec.name]
        if datatypes[spec.name] != spec.datatype:
            raise InvalidInput(
                f"input '{spec.name}': datatype {datatypes[spec.name]}, expected {spec.datatype}"
            )
        if spec.shape is not None and (
            array.ndim != len(spec.shape)
            or any(d != -1 and d != a for d, a in zip(spec.shape, array.shape, strict=True))
        ):
            raise InvalidInput(
                f"input '{spec.name}': shape {_fmt_shape(array.shape)}, "
                f"expected {_fmt_shape(spec.shape)}"
            )
        if array.ndim:
            if rows is not None and array.shape[0] != rows:
                raise InvalidInput(
                    f"input '{spec.name}': {array.shape[0]} rows, other inputs have {rows}"
                )
            rows = array.shape[0]
    return given


class Queued:
    """A request in its model's batch queue: ``future`` completes with the outputs."""

    __slots__ = ("future", "model", "request_id", "wanted")

    def __init__(
        self,
        model: LoadedModel,
        future: asyncio.Future[dict[str, np.ndarray]],
        wanted: list[str] | None,
        request_id: str,
    ) -> None:
        self.model = model
        self.future = future
        self.wanted = wanted
        self.request_id = request_id

    def response(self) -> InferenceResponse:
        """The answer, once ``future`` is done (raises what it raised)."""
        outputs = self.future.result()
        if self.wanted is not None:
            outputs = {name: outputs[name] for name in self.wanted}
        return InferenceResponse(self.model.name, self.model.version, outputs, self.request_id)


# a gRPC request is dropped this long before its deadline, while its client still listens
GRPC_MARGIN_S = 0.002


class DataPlane:
    def __init__(
        self,
        settings: WorkerSettings,
        *,
        metrics: WorkerMetrics | None = None,
        artifacts: ArtifactCache | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or WorkerMetrics()
        self.artifacts = artifacts or ArtifactCache(
            settings.cache_dir,
            timeout_s=settings.download_timeout_s,
            transport=artifact_transport(settings.tls_ca),  # trusts the fleet CA too
        )
        policy = BatchPolicy(
            max_batch_size=settings.max_batch_size,
            max_queue_delay_s=settings.max_queue_delay_ms / 1000,
            max_queue_size=settings.max_queue_size,
            retry_after_s=settings.retry_after_s,
        )
        self.repository = ModelRepository(self.metrics, policy)
        self._ready = False

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False
        await self.repository.close()

    # -- health and metadata -------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def server_metadata(self) -> dict[str, object]:
        return {"name": self.settings.name, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def model_ready(self, name: str, version: str | None) -> bool:
        self.repository.find(name, version)
        return self._ready

    def model_metadata(self, name: str, version: str | None) -> dict[str, object]:
        model = self.repository.find(name, version)
        return model.metadata(self.repository.versions(name))

    def model_config(self, name: str, version: str | None) -> dict[str, object]:
        from worker.model_info import model_config

        return model_config(self.repository.find(name, version), self.settings)

    def model_statistics(self, name: str | None, version: str | None) -> list[dict[str, object]]:
        """Statistics of one model (all of its versions unless ``version``), or of all."""
        from worker.model_info import model_statistics

        if not name:
            models = self.repository.all()
        elif version:
            models = [self.repository.find(name, version)]
        else:
            self.repository.find(name, None)
            models = [self.repository.find(name, v) for v in self.repository.versions(name)]
        return [model_statistics(m, self.metrics) for m in models]

    def repository_index(self) -> list[dict[str, str]]:
        state = "READY" if self._ready else "UNAVAILABLE"
        return [
            {"name": m.name, "version": m.version, "state": state, "reason": ""}
            for m in sorted(self.repository.all(), key=lambda m: (m.name, m.version))
        ]

    def stats(self) -> dict[str, object]:
        snapshot = self.metrics.snapshot()
        snapshot["loaded"] = [
            {
                "name": m.name,
                "version": m.version,
                "variant": m.variant,
                "platform": m.platform,
                "device": m.device,
                "sha256": m.sha256,
            }
            for m in self.repository.all()
        ]
        return snapshot

    # -- inference -----------------------------------------------------------------
    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Queue and wait; a request with ``timeout_s`` (a gRPC deadline) that is still
        queued when it runs out is dropped unrun, as a REST request past its deadline (a
        moment before the client gives up, so it hears why)."""
        deadline = None
        if request.timeout_s is not None:
            deadline = time.monotonic() + max(0.0, request.timeout_s - GRPC_MARGIN_S)
        queued = self.submit(request, deadline)
        await queued.model.batcher.wait(queued.future, request.timeout_s)
        return queued.response()

    def submit(self, request: InferenceRequest, deadline: float | None = None) -> Queued:
        """Check ``request`` and queue it with its model's batcher (the first half of
        :meth:`infer`, for callers that wait on the future themselves); past ``deadline``
        (``time.monotonic()``) it is answered 504 if still queued."""
        if not self._ready:
            raise Unavailable("worker is not ready", retry_after=1.0)
        model = self.repository.get(request.model, request.version)
        inputs = check_inputs(request, model.engine.inputs)
        wanted = self._requested_outputs(request, model)
        return Queued(model, model.batcher.submit(inputs, deadline), wanted, request.id)

    @staticmethod
    def _requested_outputs(request: InferenceRequest, model: LoadedModel) -> list[str] | None:
        if not request.outputs:
            return None
        known = {s.name for s in model.engine.outputs}
        for out in request.outputs:
            if out.name not in known:
                names = ", ".join(f"'{n}'" for n in sorted(known))
                raise InvalidInput(f"unknown output '{out.name}'; the model's outputs are {names}")
        return [o.name for o in request.outputs]

    # -- generation ----------------------------------------------------------------
    def generative_model(self, name: str, version: str | None) -> GenerativeModel:
        if not self._ready:
            raise Unavailable("worker is not ready", retry_after=1.0)
        return self.repository.generative(name, version)

    def generate(
        self,
        model: GenerativeModel,
        prompt_ids: Sequence[int],
        params: SamplingParams,
        request_id: str,
        deadline: float | None = None,
    ) -> AsyncGenerator[TokenEvent, None]:
        """Check the request, then its token events as the engine makes them.
        Close the iterator (``aclose``) to abort the sequence. One not started by
        ``deadline`` (``time.monotonic()``) is dropped before its prefill (504)."""
        return start_stream(model, prompt_ids, params, request_id, self.metrics, deadline)

    # -- repository ----------------------------------------------------------------
    async def load(self, name: str, request: LoadRequest) -> Served:
        if request.format == "generative":
            return await self._load_generative(
                name, request, local_ok=self.settings.allow_local_paths
            )
        if request.path is not None:
            if not self.settings.allow_local_paths:
                raise InvalidInput("loading from a local path is disabled on this worker")
            path, sha = local_path(request.path), request.sha256
        else:
            assert request.artifact_url is not None and request.sha256 is not None
            path = await self.artifacts.fetch(
                request.artifact_url, request.sha256, token=request.token
            )
            sha = request.sha256.lower()
            if "format" not in request.model_fields_set and await asyncio.to_thread(
                is_archive, path
            ):  # no format named (a region agent's deployment): an archive is generative
                generative = request.model_copy(update={"format": "generative"})
                return await self._load_generative(name, generative, local_ok=False)
        engine = await self._open(name, path, request)
        return await self.repository.install(
            name,
            request.version,
            request.variant,
            engine,
            source=request.artifact_url or str(path),
            sha256=sha,
            warm_up=True,
        )

    async def _load_generative(
        self, name: str, request: LoadRequest, *, local_ok: bool
    ) -> GenerativeModel:
        """A model folder, or a tar archive of one (unpacked once into the cache)."""
        from worker.archives import model_folder, unpack

        if request.path is not None:
            if not local_ok:
                raise InvalidInput("loading from a local path is disabled on this worker")
            path, sha = local_path(request.path, folder=True), request.sha256
            source = str(path)
            if path.is_file() and sha is None:
                sha = await asyncio.to_thread(sha256_file, path)
        else:
            assert request.artifact_url is not None and request.sha256 is not None
            path = await self.artifacts.fetch(
                request.artifact_url, request.sha256, token=request.token
            )
            sha, source = request.sha256.lower(), request.artifact_url
        if path.is_dir():
            folder = await asyncio.to_thread(model_folder, path)
        else:
            assert sha is not None
            target = self.artifacts.path_for(sha).with_suffix(".d")
            folder = await asyncio.to_thread(unpack, path, target)
        from worker.generative import open_generative

        engine, device = await asyncio.to_thread(open_generative, folder, self.settings, name)
        model = GenerativeModel(
            name, request.version, request.variant, engine, source, sha, device=device
        )
        return await self.repository.install_generative(model)

    async def install_generative(
        self,
        name: str,
        version: str,
        engine: GenerationEngine,
        *,
        variant: str = "base",
        device: str = "cpu",
    ) -> GenerativeModel:
        """Serve a generation engine built by the caller (embedded use and tests)."""
        model = GenerativeModel(name, version, variant, engine, "engine", device=device)
        return await self.repository.install_generative(model)

    async def load_path(
        self, name: str, version: str, path: Path, *, variant: str = "base", fmt: str | None = None
    ) -> Served:
        """Serve a local model file or folder (the ``--model name:version=path`` form):
        a folder, or ``fmt`` "generative", is a generative model."""
        from worker.engines.base import guess_format

        folder = await asyncio.to_thread(path.is_dir)
        if fmt == "generative" or (fmt is None and folder):
            request = LoadRequest(
                version=version, variant=variant, format="generative", path=str(path)
            )
            # Start-up models are the operator's own: local paths are always allowed.
            return await self._load_generative(name, request, local_ok=True)
        req = LoadRequest(
            version=version,
            variant=variant,
            format=guess_format(path) if fmt is None else fmt,  # type: ignore[arg-type]
            path=str(path),
        )
        engine = await self._open(name, local_path(str(path)), req)
        return await self.repository.install(
            name, version, variant, engine, source=str(path), warm_up=True
        )

    async def install_engine(
        self, name: str, version: str, engine: Engine, *, variant: str = "base"
    ) -> LoadedModel:
        """Serve an engine built by the caller (embedded use and tests)."""
        return await self.repository.install(name, version, variant, engine, source="engine")

    async def unload(self, name: str, version: str | None = None) -> None:
        await self.repository.remove(name, version)

    async def _open(self, name: str, path: Path, request: LoadRequest) -> Engine:
        assert request.format != "generative"
        try:
            return await asyncio.to_thread(
                open_engine,
                path,
                request.format,
                threads=self.settings.engine_threads,
                use_gpu=self.settings.use_gpu,
            )
        except ProbeMismatch as exc:  # name what was refused, for the load answer and logs
            raise ProbeMismatch(
                f"{name}:{request.version} variant {request.variant}: {exc.message}"
            ) from exc
