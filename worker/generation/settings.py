"""Settings of one generation engine (one model behind one batching loop)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["GenerationSettings"]


class GenerationSettings(BaseModel):
    """How the engine batches, caches and bounds its work.

    ``kv_cache_tokens`` is the KV budget in tokens (rounded down to whole blocks);
    ``None`` means ``default_kv_cache_tokens`` on CPU and ``gpu_memory_fraction``
    of the free device memory on CUDA.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    block_size: int = Field(default=16, ge=1, le=1024)
    kv_cache_tokens: int | None = Field(default=None, ge=1)
    default_kv_cache_tokens: int = Field(default=32768, ge=1)
    gpu_memory_fraction: float = Field(default=0.5, gt=0.0, le=0.95)
    max_num_seqs: int = Field(default=64, ge=1)
    max_batched_tokens: int = Field(default=1024, ge=1)
    prefill_chunk: int = Field(default=512, ge=1)
    prefix_caching: bool = True
    policy: Literal["continuous", "static"] = "continuous"
    max_model_len: int | None = Field(default=None, ge=2)
    threads: int | None = Field(default=None, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> GenerationSettings:
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.block_size:
            raise ValueError("kv_cache_tokens must hold at least one block")
        return self
