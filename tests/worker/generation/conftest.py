from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.worker.generation.tiny import build_tiny_gpt2
from worker.generation.engine import Engine
from worker.generation.factory import open_generation_engine
from worker.generation.settings import GenerationSettings

EngineFactory = Callable[..., AbstractAsyncContextManager[Engine]]


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def hf_gpt2(tiny_gpt2: Path) -> Any:
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(tiny_gpt2), attn_implementation="eager").eval()


@pytest.fixture
def engine_factory(tiny_gpt2: Path) -> EngineFactory:
    @asynccontextmanager
    async def running(**overrides: Any) -> AsyncIterator[Engine]:
        settings = GenerationSettings(**{"kv_cache_tokens": 4096, "block_size": 4, **overrides})
        engine = open_generation_engine(tiny_gpt2, settings, name="tiny", device="cpu")
        await engine.start()
        try:
            yield engine
        finally:
            await engine.stop()

    return running
