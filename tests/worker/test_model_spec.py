from __future__ import annotations

from pathlib import Path

import pytest

from worker.app import ModelSpec

SHA = "ab" * 32


def test_local_file_with_defaults() -> None:
    spec = ModelSpec.parse("mlp=/m/mlp.onnx")
    assert (spec.name, spec.version, spec.variant, spec.path, spec.url) == (
        "mlp", "1", "base", Path("/m/mlp.onnx"), None,
    )  # fmt: skip


def test_artifact_url_with_variant_and_digest() -> None:
    spec = ModelSpec.parse(f"minilm:2:int8=http://127.0.0.1:8080/v1/a#sha256={SHA}")
    assert (spec.name, spec.version, spec.variant) == ("minilm", "2", "int8")
    assert spec.url == "http://127.0.0.1:8080/v1/a" and spec.sha256 == SHA


@pytest.mark.parametrize("text", ["mlp", "=x.onnx", "m=http://h/a", "m=http://h/a#sha256=12"])
def test_malformed_specs_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        ModelSpec.parse(text)
