"""Model folders shipped as tar archives: unpacked once, never outside the target."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from meridian.errors import InvalidInput
from worker.app import ModelSpec
from worker.archives import unpack


def _archive(path: Path, entries: list[tarfile.TarInfo], data: bytes = b"{}") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            if info.isfile():
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def test_unpacks_the_model_folder_once(tmp_path: Path) -> None:
    folder = tarfile.TarInfo("tiny")
    folder.type = tarfile.DIRTYPE
    archive = _archive(tmp_path / "m.tar.gz", [folder, _file("tiny/config.json")])
    target = tmp_path / "cache" / "abc.d"
    found = unpack(archive, target)
    assert found == target / "tiny" and (found / "config.json").read_bytes() == b"{}"
    archive.unlink()  # a second load uses the unpacked folder
    assert unpack(archive, target) == found


@pytest.mark.parametrize("name", ["../evil.json", "/etc/evil.json", "a/../../evil.json"])
def test_entries_outside_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = _archive(tmp_path / "m.tar.gz", [_file("config.json"), _file(name)])
    with pytest.raises(InvalidInput, match="outside"):
        unpack(archive, tmp_path / "cache" / "x.d")
    assert not (tmp_path / "cache" / "x.d").exists()
    assert not (tmp_path / "evil.json").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("config.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = _archive(tmp_path / "m.tar", [link])
    with pytest.raises(InvalidInput, match="not a regular file"):
        unpack(archive, tmp_path / "cache" / "x.d")


def test_not_an_archive_or_no_config(tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(InvalidInput, match="tar archive"):
        unpack(junk, tmp_path / "cache" / "a.d")
    archive = _archive(tmp_path / "m.tar", [_file("weights.bin")])
    with pytest.raises(InvalidInput, match=r"config\.json"):
        unpack(archive, tmp_path / "cache" / "b.d")


def test_model_spec_formats() -> None:
    sha = "a" * 64
    spec = ModelSpec.parse(f"lm:2=https://h/lm.tar.gz#sha256={sha}")
    assert (spec.format, spec.sha256, spec.url) == ("generative", sha, "https://h/lm.tar.gz")
    spec = ModelSpec.parse(f"lm=https://h/blob#sha256={sha}&format=generative")
    assert spec.format == "generative"
    assert ModelSpec.parse("lm=/m/dir#format=generative").format == "generative"
    assert ModelSpec.parse("mlp=/m/a.onnx").format is None
    with pytest.raises(ValueError, match="format"):
        ModelSpec.parse("lm=/m/dir#format=gguf")
    with pytest.raises(ValueError, match="unknown option"):
        ModelSpec.parse("lm=/m/dir#size=3")
