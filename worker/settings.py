"""Worker settings (environment prefix ``MERIDIAN_WORKER_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERIDIAN_WORKER_", extra="ignore")

    host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    # None: no gRPC listener.
    grpc_port: int | None = Field(default=8001, ge=0, le=65535)
    name: str = "meridian-worker"

    # Dynamic batching, per model.
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_queue_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    max_queue_size: int = Field(default=256, ge=1, le=1_000_000)
    retry_after_s: float = Field(default=1.0, ge=0)

    # Request limits.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # Engines. None: as many intra-op threads as the host has cores.
    engine_threads: int | None = Field(default=None, ge=1)
    use_gpu: bool = True

    # Repository.
    cache_dir: Path = Path("var/artifacts")
    # Whether the load API accepts local file paths (development and embedded use).
    allow_local_paths: bool = False
    download_timeout_s: float = Field(default=60.0, gt=0)

    # Generative models, per model: the paged KV cache and the continuous-batching
    # loop (see worker.generation). None: the engine's default.
    kv_cache_tokens: int | None = Field(default=None, ge=1)
    block_size: int = Field(default=16, ge=1, le=1024)
    max_num_seqs: int = Field(default=64, ge=1)
    max_batched_tokens: int = Field(default=1024, ge=1)
    prefix_caching: bool = True
    max_model_len: int | None = Field(default=None, ge=2)
    gpu_memory_fraction: float = Field(default=0.5, gt=0.0, le=0.95)

    # TLS (worker.access): this worker's certificate and key, and the fleet CA whose
    # client certificates it requires (the router's for inference and management).
    # None: plaintext, for local use.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    # Bearer token of the model-management routes (load, unload), required in every
    # mode: without one they are refused.
    management_token: SecretStr | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def management_secret(self) -> str | None:
        token = self.management_token
        return token.get_secret_value() if token is not None else None

    @model_validator(mode="after")
    def _tls_files_together(self) -> WorkerSettings:
        given = [self.tls_cert is not None, self.tls_key is not None, self.tls_ca is not None]
        if any(given) and not all(given):
            raise ValueError("tls_cert, tls_key and tls_ca go together")
        return self
