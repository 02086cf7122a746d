"""Model folders shipped as one artifact: a tar archive (plain, gzip, bzip2 or xz).

A generative model is a folder (``config.json``, weights, tokenizer files). Its
artifact is an archive of that folder, fetched and sha256-verified like every
artifact (:mod:`worker.artifacts`), then unpacked once into the cache next to it
(``<sha256>.d``). Only regular files and folders are unpacked, and only inside
the target: absolute names, ``..``, links and device files are refused. A folder
is unpacked into a temporary name and renamed into place when complete, so a
half-unpacked folder is never served.
"""

from __future__ import annotations

import contextlib
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from meridian.errors import InvalidInput

__all__ = ["model_folder", "unpack"]

MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 256 * 1024**3


def _check(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise InvalidInput(f"archive entry '{member.name}' points outside the model folder")
    if not (member.isfile() or member.isdir()):
        raise InvalidInput(
            f"archive entry '{member.name}' is not a regular file or folder (links and "
            "devices are not unpacked)"
        )


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive (an ONNX or TorchScript file never is)."""
    return path.is_file() and tarfile.is_tarfile(path)


def unpack(archive: Path, target: Path) -> Path:
    """Unpack ``archive`` into the folder ``target`` (kept if already there); the
    model folder inside it (see :func:`model_folder`)."""
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
        try:
            try:
                with tarfile.open(archive, "r:*") as tar:
                    members = tar.getmembers()
                    if len(members) > MAX_MEMBERS:
                        raise InvalidInput(f"archive has more than {MAX_MEMBERS} entries")
                    if sum(m.size for m in members) > MAX_UNPACKED_BYTES:
                        raise InvalidInput("archive unpacks to more than 256 GiB")
                    for member in members:
                        _check(member)
                    tar.extractall(staging, members=members, filter="data")
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise InvalidInput(f"artifact is not a readable tar archive: {exc}") from None
            try:
                staging.rename(target)
            except OSError:  # unpacked meanwhile by another load of the same artifact
                if not target.is_dir():
                    raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(staging)
    return model_folder(target)


def model_folder(root: Path) -> Path:
    """The folder holding ``config.json``: ``root`` itself, or its only subfolder."""
    if (root / "config.json").is_file():
        return root
    entries = [p for p in root.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise InvalidInput(
        "a generative model is a folder with 'config.json' (and its weights and tokenizer)"
    )
