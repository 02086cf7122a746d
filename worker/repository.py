"""Loaded models: each model version with its engine, variant and batcher."""

from __future__ import annotations

import asyncio
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from meridian.errors import InvalidInput, NotFound
from worker.batcher import BatchPolicy, DynamicBatcher
from worker.engines.base import Engine
from worker.generative import GenerativeModel
from worker.metrics import WorkerMetrics
from worker.tensors import sample_inputs

__all__ = ["LoadRequest", "LoadedModel", "ModelFormat", "ModelRepository", "Served"]

# "generative": a causal language model (a Hugging Face checkpoint folder, or a tar
# archive of one) served by the generation engine.
ModelFormat = Literal["onnx", "torchscript", "generative"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise InvalidInput(f"{what} '{value}' is not valid (letters, digits, '_', '.', '-')")
    return value


class LoadRequest(BaseModel):
    """Parameters of ``POST /v2/repository/models/{name}/load``."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(default="1", min_length=1, max_length=64)
    variant: str = Field(default="base", min_length=1, max_length=64)
    format: ModelFormat = "onnx"
    artifact_url: str | None = Field(default=None, max_length=4096)
    sha256: str | None = Field(default=None, min_length=64, max_length=64)
    token: str | None = Field(default=None, max_length=4096, repr=False)
    path: str | None = Field(default=None, max_length=4096)

    @classmethod
    def parse(cls, data: object) -> LoadRequest:
        if isinstance(data, dict) and isinstance(data.get("parameters"), dict):
            data = data["parameters"]
        if isinstance(data, dict) and isinstance(data.get("config"), str):
            # Triton clients' load_model(config=...) sends the settings as one JSON string.
            try:
                config = json.loads(data["config"])
            except ValueError:
                raise InvalidInput("load parameter 'config' is not valid JSON") from None
            if not isinstance(config, dict):
                raise InvalidInput("load parameter 'config' must be a JSON object")
            data = {**{k: v for k, v in data.items() if k != "config"}, **config}
        try:
            req = cls.model_validate(data or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InvalidInput(f"load parameter '{where}': {first['msg']}") from None
        if (req.artifact_url is None) == (req.path is None):
            raise InvalidInput("give exactly one of 'artifact_url' (with 'sha256') or 'path'")
        if req.artifact_url is not None and req.sha256 is None:
            raise InvalidInput("'sha256' is required with 'artifact_url'")
        check_name(req.version, "version")
        check_name(req.variant, "variant")
        return req


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: str
    variant: str
    engine: Engine
    batcher: DynamicBatcher
    executor: ThreadPoolExecutor
    source: str
    sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def platform(self) -> str:
        return self.engine.platform

    @property
    def device(self) -> str:
        return self.engine.device

    def metadata(self, versions: list[str]) -> dict[str, object]:
        return {
            "name": self.name,
            "versions": versions,
            "platform": self.engine.platform,
            "inputs": [s.as_dict() for s in self.engine.inputs],
            "outputs": [s.as_dict() for s in self.engine.outputs],
            "parameters": {"variant": self.variant, "device": self.engine.device},
        }


Served = LoadedModel | GenerativeModel


def _version_key(v: str) -> tuple[int, int, str]:
    return (1, int(v), "") if v.isdigit() else (0, 0, v)


def is_batchable(engine: Engine) -> bool:
    """Batch along dim 0 only when every input declares a variable first dimension."""
    return bool(engine.inputs) and all(
        s.shape is not None and len(s.shape) >= 1 and s.shape[0] == -1 for s in engine.inputs
    )


class ModelRepository:
    """The models this worker serves, keyed by name then version."""

    def __init__(self, metrics: WorkerMetrics, policy: BatchPolicy) -> None:
        self._metrics = metrics
        self._policy = policy
        self._models: dict[str, dict[str, Served]] = {}
        self._lock = asyncio.Lock()

    def names(self) -> list[str]:
        return sorted(self._models)

    def versions(self, name: str) -> list[str]:
        return sorted(self._models.get(name, {}), key=_version_key)

    def get(self, name: str, version: str | None) -> LoadedModel:
        """A model that answers tensor inference requests."""
        model = self.find(name, version)
        if isinstance(model, GenerativeModel):
            raise InvalidInput(
                f"model '{name}' generates text: use its generate endpoints, the OpenAI "
                "routes or ModelStreamInfer"
            )
        return model

    def generative(self, name: str, version: str | None) -> GenerativeModel:
        """A model that generates text."""
        model = self.find(name, version)
        if not isinstance(model, GenerativeModel):
            raise InvalidInput(f"model '{name}' does not generate text")
        return model

    def find(self, name: str, version: str | None) -> Served:
        versions = self._models.get(name)
        if not versions:
            raise NotFound(f"model '{name}' is not loaded")
        if not version:
            return versions[max(versions, key=_version_key)]
        try:
            return versions[version]
        except KeyError:
            raise NotFound(f"model '{name}' has no loaded version '{version}'") from None

    def all(self) -> list[Served]:
        return [m for versions in self._models.values() for m in versions.values()]

    async def install(
        self,
        name: str,
        version: str,
        variant: str,
        engine: Engine,
        *,
        source: str,
        sha256: str | None = None,
        executor: ThreadPoolExecutor | None = None,
        warm_up: bool = False,
    ) -> LoadedModel:
        """Serve ``engine`` as name/version; a model already there is drained, then closed.

        ``warm_up`` runs a placeholder row first (it seeds the capacity estimate)."""
        check_name(name, "model name")
        label = f"{name}:{version}"
        executor = executor or ThreadPoolExecutor(1, thread_name_prefix=f"engine-{label}")
        batcher = DynamicBatcher(
            label,
            engine.run,
            policy=self._policy,
            batchable=is_batchable(engine),
            executor=executor,
            metrics=self._metrics,
        )
        model = LoadedModel(name, version, variant, engine, batcher, executor, source, sha256)
        sample = sample_inputs(engine.inputs) if warm_up else None
        if sample is not None:
            await batcher.warm_up(sample)
        async with self._lock:
            batcher.start()
            old = self._models.setdefault(name, {}).get(version)
            self._models[name][version] = model
        if old is not None:
            await self._close(old)
        return model

    async def install_generative(self, model: GenerativeModel) -> GenerativeModel:
        """Serve a generative model (its engine is started here); a model already
        there under the same name and version is stopped."""
        check_name(model.name, "model name")
        await model.engine.start()
        async with self._lock:
            old = self._models.setdefault(model.name, {}).get(model.version)
            self._models[model.name][model.version] = model
            self._metrics.engines.sources[model.label] = model.engine.stats
        if old is not None:
            await self._close(old)
        return model

    async def remove(self, name: str, version: str | None = None) -> list[Served]:
        async with self._lock:
            versions = self._models.get(name)
            if not versions:
                raise NotFound(f"model '{name}' is not loaded")
            if version is None:
                removed = list(versions.values())
                del self._models[name]
            else:
                if version not in versions:
                    raise NotFound(f"model '{name}' has no loaded version '{version}'")
                removed = [versions.pop(version)]
                if not versions:
                    del self._models[name]
        for model in removed:
            await self._close(model)
        return removed

    async def close(self) -> None:
        for name in list(self._models):
            await self.remove(name)

    async def _close(self, model: Served) -> None:
        if isinstance(model, GenerativeModel):
            sources = self._metrics.engines.sources
            if sources.get(model.label) == model.engine.stats:
                del sources[model.label]
            await model.engine.stop()
            return
        await model.batcher.stop()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(model.executor, model.engine.close)
        model.executor.shutdown(wait=False)


def local_path(path: str, *, folder: bool = False) -> Path:
    """A local model file (or, with ``folder``, a model folder or an archive of one)."""
    p = Path(path)
    if folder and p.is_dir():
        return p
    if not p.is_file():
        raise NotFound(f"no model {'folder or file' if folder else 'file'} at '{path}'")
    return p
