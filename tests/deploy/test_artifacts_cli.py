"""``meridian artifacts upload`` against a real control plane process."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from control_plane import artifacts_cli
from meridian.cli import main

from .conftest import ControlPlane, unique


def test_upload_streams_the_file_with_its_digest_and_shows_progress(
    control_plane: ControlPlane,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cp, model = control_plane, unique("mlp")
    cp.model_version(model, artifact=False)
    monkeypatch.setattr(artifacts_cli, "CHUNK", 64 << 10)  # several chunks for a small file
    artifact = tmp_path / "model.onnx"
    data = bytes(range(256)) * 1500  # 384000 bytes: six chunks
    artifact.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    common = ["--control-plane", cp.url, "--token", cp.token, "--model", model, "--version", "1"]

    assert main(["artifacts", "upload", *common, str(artifact)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == f"{model}:1: stored {len(data)} bytes, sha256 {digest}"
    assert "uploading" in captured.err and "384.0" in captured.err  # the bar, done
    stored = cp.ok("GET", f"/v1/models/{model}/versions/1")
    assert (stored["artifact_sha256"], stored["artifact_size"]) == (digest, len(data))
    with cp.client() as http:
        assert http.get(f"/v1/models/{model}/versions/1/artifact").content == data

    # a variant, quietly, answered as JSON
    cp.ok("POST", f"/v1/models/{model}/versions/1/variants", 201, json={"name": "int8"})
    small = tmp_path / "int8.onnx"
    small.write_bytes(b"int8 bytes")
    args = [*common, "--variant", "int8", "--no-progress", "--output", "json", str(small)]
    assert main(["artifacts", "upload", *args]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out)["artifact_sha256"] == hashlib.sha256(b"int8 bytes").hexdigest()


def test_upload_failures_are_explicit(
    control_plane: ControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cp = control_plane
    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"x" * 10)
    base = ["artifacts", "upload", "--control-plane", cp.url, "--no-progress"]
    missing = unique("nope")
    args = [*base, "--token", cp.token, "--model", missing, "--version", "1", str(artifact)]
    assert main(args) == 1
    assert f"PUT /v1/models/{missing}/versions/1/artifact: 404" in capsys.readouterr().err
    read = cp.ok("POST", "/v1/tokens", 201, json={"name": unique("r"), "scopes": ["read"]})
    args = [*base, "--token", read["token"], "--model", missing, "--version", "1", str(artifact)]
    assert main(args) == 1
    assert "403" in capsys.readouterr().err
    args = [*base, "--token", cp.token, "--model", "m", "--version", "1", str(tmp_path / "none")]
    assert main(args) == 2
    assert "is not a file" in capsys.readouterr().err
