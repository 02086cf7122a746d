"""Where model files live: a small store interface and a local-directory store.

A write streams into a temporary file while hashing it and counting bytes; it
fails with 413 as soon as the size limit is passed and with 400 when the content
does not match the digest the client declared (the temporary file is removed
either way). Only a verified file is fsynced and renamed into place, and its
directory fsynced, so a file the registry points at is complete and durable.

An object-storage store implements the same ``ArtifactStore`` protocol.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

import anyio

from meridian.errors import InvalidInput, NotFound, PayloadTooLarge

__all__ = ["ArtifactStore", "LocalArtifactStore", "StoredArtifact", "parse_sha256"]

CHUNK_BYTES = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size: int


def parse_sha256(value: str | None, *, field: str = "X-Artifact-Sha256") -> str:
    """A declared sha256 digest as 64 lowercase hex characters, or a 400 naming ``field``."""
    if not value:
        raise InvalidInput(f"{field} is required: the sha256 hex digest of the artifact")
    digest = value.strip().lower()
    if not _SHA256.match(digest):
        raise InvalidInput(f"{field} must be 64 hex characters (a sha256 digest)")
    return digest


class ArtifactStore(Protocol):
    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, expected_sha256: str, max_bytes: int
    ) -> StoredArtifact:
        """Store a stream under ``key``; verify size and digest before it becomes visible."""
        ...

    async def open(self, uri: str) -> AsyncIterator[bytes]:
        """Open a stored artifact (404 when missing) and return its content as a stream."""
        ...

    def delete(self, uri: str) -> None:
        """Remove an artifact; a missing one is not an error (blocking: call from a thread)."""
        ...


class LocalArtifactStore:
    """Artifacts as files under one directory; URIs are ``file://`` URLs."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._tmp = self.root / ".tmp"

    def _path_for_key(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise InvalidInput(f"artifact key {key!r} is not a safe relative path")
        return self.root / key

    def _path_for_uri(self, uri: str) -> Path:
        parsed = urlparse(uri)
        path = Path(unquote(parsed.path)).resolve()
        if parsed.scheme != "file" or not path.is_relative_to(self.root):
            raise NotFound(f"artifact {uri} is not in this store")
        return path

    async def put(
        self, key: str, chunks: AsyncIterable[bytes], *, expected_sha256: str, max_bytes: int
    ) -> StoredArtifact:
        final = self._path_for_key(key)
        self._tmp.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            async with await anyio.open_file(tmp, "wb") as out:
                pending = bytearray()
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"artifact is larger than the limit of {max_bytes} bytes"
                        )
                    digest.update(chunk)
                    pending += chunk
                    if len(pending) >= CHUNK_BYTES:
                        await out.write(bytes(pending))
                        pending.clear()
                if pending:
                    await out.write(bytes(pending))
                await out.flush()
                await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
            actual = digest.hexdigest()
            if actual != expected_sha256:
                raise InvalidInput(
                    f"artifact sha256 mismatch: declared {expected_sha256}, received {actual}"
                )
            await anyio.to_thread.run_sync(_install, tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return StoredArtifact(uri=final.as_uri(), sha256=actual, size=size)

    async def open(self, uri: str) -> AsyncIterator[bytes]:
        path = self._path_for_uri(uri)
        try:
            handle = await anyio.open_file(path, "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"artifact file for {uri} is missing") from exc
        return _read_all(handle)

    def delete(self, uri: str) -> None:
        self._path_for_uri(uri).unlink(missing_ok=True)

    def exists(self, uri: str) -> bool:
        return self._path_for_uri(uri).is_file()


async def _read_all(handle: anyio.AsyncFile[bytes]) -> AsyncIterator[bytes]:
    async with handle:
        while chunk := await handle.read(CHUNK_BYTES):
            yield chunk


def _install(tmp: Path, final: Path) -> None:
    """Atomically move a verified file into place and make the rename durable."""
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
