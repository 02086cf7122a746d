"""Streaming artifact upload and download: limits, digests, immutability."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.artifacts import LocalArtifactStore
from meridian.errors import InvalidInput
from tests.control_plane.conftest import MAX_ARTIFACT_BYTES, Api, sha256


def _chunks(data: bytes, size: int = 256 * 1024) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _leftovers(api: Api) -> list[Path]:
    tmp = api.settings.resolved_artifact_dir / ".tmp"
    return list(tmp.iterdir()) if tmp.exists() else []


def test_multi_megabyte_artifact_streams_both_ways(api: Api) -> None:
    model = api.model()
    api.version(model)
    path = f"/v1/models/{model}/versions/1/artifact"
    data = os.urandom(5 * 1024 * 1024 + 17)
    # a generator body goes out chunked: the server never sees a Content-Length
    r = api.client.put(
        path, content=_chunks(data), headers=api.headers(**{"X-Artifact-Sha256": sha256(data)})
    )
    assert r.status_code == 200, r.text
    version = r.json()
    assert version["artifact_sha256"] == sha256(data) and version["artifact_size"] == len(data)
    assert version["row_version"] == 2

    with api.client.stream("GET", path, headers=api.admin) as down:
        assert down.status_code == 200
        assert down.headers["X-Artifact-Sha256"] == sha256(data)
        assert down.headers["Content-Disposition"] == f'attachment; filename="{model}-1.onnx"'
        received = b"".join(down.iter_bytes())
    assert received == data

    head = api.client.head(path, headers=api.admin)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    assert head.content == b""
    assert not _leftovers(api)


def test_digest_mismatch_is_a_400_and_leaves_nothing(api: Api) -> None:
    model = api.model()
    api.version(model)
    path = f"/v1/models/{model}/versions/1/artifact"
    r = api.client.put(
        path, content=b"real bytes", headers=api.headers(**{"X-Artifact-Sha256": sha256(b"other")})
    )
    assert r.status_code == 400 and "mismatch" in r.json()["detail"]
    assert api.ok("GET", f"/v1/models/{model}/versions/1")["artifact_sha256"] is None
    assert api.client.get(path, headers=api.admin).status_code == 404
    assert not _leftovers(api)

    r = api.client.put(path, content=b"x", headers=api.admin)
    assert r.status_code == 400 and "X-Artifact-Sha256" in r.json()["detail"]
    r = api.client.put(path, content=b"x", headers=api.headers(**{"X-Artifact-Sha256": "abc"}))
    assert r.status_code == 400 and "64 hex" in r.json()["detail"]


def test_over_the_limit_is_a_413_declared_or_streamed(api: Api) -> None:
    model = api.model()
    api.version(model)
    path = f"/v1/models/{model}/versions/1/artifact"
    data = b"\0" * (MAX_ARTIFACT_BYTES + 1)
    headers = api.headers(**{"X-Artifact-Sha256": sha256(data)})
    declared = api.client.put(path, content=data, headers=headers)
    assert declared.status_code == 413 and str(MAX_ARTIFACT_BYTES) in declared.json()["detail"]
    streamed = api.client.put(path, content=_chunks(data, 1024 * 1024), headers=headers)
    assert streamed.status_code == 413
    assert api.ok("GET", f"/v1/models/{model}/versions/1")["artifact_size"] is None
    assert not _leftovers(api)


def test_artifacts_are_immutable_but_reupload_of_the_same_bytes_is_fine(api: Api) -> None:
    model = api.model()
    api.version(model)
    path = f"/v1/models/{model}/versions/1/artifact"
    first = api.upload(path, b"v1 bytes")
    again = api.upload(path, b"v1 bytes")
    assert again["row_version"] == first["row_version"]
    r = api.client.put(
        path, content=b"other", headers=api.headers(**{"X-Artifact-Sha256": sha256(b"other")})
    )
    assert r.status_code == 409 and "immutable" in r.json()["detail"]
    r = api.client.patch(
        f"/v1/models/{model}/versions/1",
        json={"format": "torchscript"},
        headers=api.headers(**{"If-Match": "*"}),
    )
    assert r.status_code == 409
    assert api.client.get(path, headers=api.admin).content == b"v1 bytes"


def test_variant_artifacts(api: Api) -> None:
    model = api.model()
    api.version(model, format="torchscript")
    api.ok("POST", f"/v1/models/{model}/versions/1/variants", 201, json={"name": "int8"})
    path = f"/v1/models/{model}/versions/1/variants/int8/artifact"
    assert api.client.get(path, headers=api.admin).status_code == 404
    variant = api.upload(path, b"quantized")
    assert variant["artifact_sha256"] == sha256(b"quantized")
    r = api.client.get(path, headers=api.admin)
    assert r.content == b"quantized"
    assert r.headers["Content-Disposition"].endswith(f'filename="{model}-1-int8.pt"')
    assert (
        api.client.put(
            f"/v1/models/{model}/versions/1/variants/fp16/artifact",
            content=b"x",
            headers=api.headers(**{"X-Artifact-Sha256": sha256(b"x")}),
        ).status_code
        == 404
    )


def test_deleting_a_version_removes_its_files(api: Api) -> None:
    model = api.model()
    api.version(model)
    version = api.upload(f"/v1/models/{model}/versions/1/artifact", b"to be deleted")
    store = LocalArtifactStore(api.settings.resolved_artifact_dir)
    assert store.exists(version["artifact_uri"])
    r = api.client.delete(
        f"/v1/models/{model}/versions/1", headers=api.headers(**{"If-Match": "*"})
    )
    assert r.status_code == 204
    assert not store.exists(version["artifact_uri"])


def test_store_refuses_keys_outside_its_root(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    with pytest.raises(InvalidInput):
        store._path_for_key("../escape")
    with pytest.raises(InvalidInput):
        store._path_for_key("/abs/path")
