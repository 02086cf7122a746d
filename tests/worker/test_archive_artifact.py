"""A fetched artifact with no format named (what a region agent's worker gets): a tar
archive of a model folder is served as generative; a format named is kept."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest

from meridian.errors import InvalidInput
from tests.worker.generation.tiny import build_tiny_gpt2
from tests.worker.test_repository import TOKEN, ArtifactServer
from worker.dataplane import DataPlane
from worker.generative import GenerativeModel
from worker.repository import LoadRequest
from worker.settings import WorkerSettings


async def test_an_archive_with_no_format_named_is_generative(tmp_path: Path) -> None:
    folder = build_tiny_gpt2(tmp_path / "tiny")
    archive = tmp_path / "tiny.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="tiny")
    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    dp = DataPlane(WorkerSettings(cache_dir=tmp_path / "cache"))
    with ArtifactServer({"/v1/models/tiny/versions/1/artifact": data}) as server:
        url = f"{server.url}/v1/models/tiny/versions/1/artifact"
        plain = {"artifact_url": url, "sha256": sha, "token": TOKEN}
        served = await dp.load("tiny", LoadRequest.model_validate(plain))
        assert isinstance(served, GenerativeModel)
        assert served.sha256 == sha
        named = LoadRequest.model_validate({**plain, "format": "onnx"})
        with pytest.raises(InvalidInput):  # told it is ONNX: opened as ONNX, and refused
            await dp.load("tiny-onnx", named)
    await dp.stop()
