"""Model artifacts: fetched over HTTP, verified by sha256, cached on disk by digest.

A second load of the same digest uses the cached file without any network call.
Downloads stream to a temporary file next to the cache entry and are renamed
into place only after the digest matches, so a partial or corrupt download is
never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path

import httpx

from meridian.errors import InvalidInput, NotFound, Unavailable

__all__ = ["ArtifactCache"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    def __init__(
        self,
        directory: Path,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.directory = directory
        self._transport = transport
        self._timeout_s = timeout_s
        self.downloads = 0

    def path_for(self, sha256: str) -> Path:
        return self.directory / sha256

    async def fetch(self, url: str, sha256: str, *, token: str | None = None) -> Path:
        """The local path of the artifact with ``sha256``, downloading it if needed."""
        sha256 = sha256.lower()
        if not _SHA256.match(sha256):
            raise InvalidInput("sha256 must be 64 hexadecimal characters")
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("artifact_url must be an http(s) URL")
        target = self.path_for(sha256)
        if target.exists():
            return target
        self.directory.mkdir(parents=True, exist_ok=True)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.directory, prefix=".part-")
        try:
            async with httpx.AsyncClient(
                transport=self._transport, timeout=self._timeout_s, follow_redirects=True
            ) as client:
                async with client.stream("GET", url, headers=headers) as response:
                    if response.status_code == 404:
                        raise NotFound(f"artifact not found at {url}")
                    if response.status_code in (401, 403):
                        raise InvalidInput(
                            f"artifact server refused the credentials ({response.status_code})"
                        )
                    if response.status_code != 200:
                        raise Unavailable(
                            f"artifact server answered {response.status_code}", retry_after=5.0
                        )
                    with os.fdopen(fd, "wb") as out:
                        fd = -1
                        async for chunk in response.aiter_bytes(_CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
            got = digest.hexdigest()
            if got != sha256:
                raise InvalidInput(f"artifact sha256 mismatch: expected {sha256}, got {got}")
            os.replace(tmp_name, target)
            self.downloads += 1
            return target
        except httpx.HTTPError as exc:
            raise Unavailable(f"artifact download failed: {exc}", retry_after=5.0) from exc
        finally:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
