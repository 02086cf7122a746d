"""``meridian artifacts upload``: send a model version's (or variant's) artifact to the registry.

The file is hashed, then streamed in chunks (never read into memory whole) with its
sha256 in ``X-Artifact-Sha256``, which the control plane checks before it keeps the
artifact. Both passes show a progress bar (``rich``) on standard error; ``--no-progress``
turns it off. Standard output gets one line saying what was stored (``--output json``:
the registry's answer).

The token comes from ``--token``, ``--token-file`` or ``MERIDIAN_ADMIN_TOKEN``; it needs
the admin scope. Exit status: 0 stored, 1 the control plane refused or could not be
reached, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control_plane.cli_auth import (
    CliUsageError,
    add_connection_arguments,
    control_plane_url,
    resolve_token,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["UploadError", "add_arguments", "artifact_path", "main", "sha256_of", "upload"]

TOKEN_ENVS = ("MERIDIAN_ADMIN_TOKEN",)
CHUNK = 1 << 20
Advance = Callable[[int], None]


class UploadError(Exception):
    """The control plane refused the artifact, or could not be reached."""


def artifact_path(model: str, version: str, variant: str | None = None) -> str:
    base = f"/v1/models/{model}/versions/{version}"
    return f"{base}/variants/{variant}/artifact" if variant else f"{base}/artifact"


def _chunks(path: Path, advance: Advance) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            advance(len(chunk))
            yield chunk


def sha256_of(path: Path, advance: Advance = lambda n: None) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path, advance):
        digest.update(chunk)
    return digest.hexdigest()


def upload(
    http: httpx.Client, target: str, path: Path, digest: str, advance: Advance = lambda n: None
) -> dict[str, Any]:
    """Stream ``path`` to ``target`` (an artifact URL path); the registry's answer."""
    import httpx

    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(path.stat().st_size),
        "X-Artifact-Sha256": digest,
    }
    try:
        response = http.put(target, content=_chunks(path, advance), headers=headers)
    except httpx.TransportError as exc:
        raise UploadError(f"cannot reach the control plane at {http.base_url}: {exc}") from exc
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):
            detail = response.text
        hint = {401: " (check the token)", 403: " (the token needs the admin scope)"}
        raise UploadError(
            f"PUT {target}: {response.status_code} {detail}{hint.get(response.status_code, '')}"
        )
    body: dict[str, Any] = response.json()
    return body


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="artifacts_command", required=True, metavar="ACTION")
    up = sub.add_parser("upload", help="upload a version's or a variant's artifact")
    add_connection_arguments(up, TOKEN_ENVS, "admin")
    up.add_argument("--model", required=True)
    up.add_argument("--version", required=True)
    up.add_argument("--variant", help="a variant of the version (e.g. int8)")
    up.add_argument("--no-progress", action="store_true", help="no progress bars")
    up.add_argument("--output", choices=("text", "json"), default="text")
    up.add_argument("file", type=Path, help="the artifact (ONNX file, TorchScript, tar archive)")
    # uploads of large files take a while: the default is for the whole transfer
    up.set_defaults(timeout=600.0)


def main(args: argparse.Namespace) -> int:
    import httpx
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    try:
        url = control_plane_url(args)
        token = resolve_token(args, TOKEN_ENVS, "an admin")
        if not args.file.is_file():
            raise CliUsageError(f"{args.file} is not a file")
    except CliUsageError as exc:
        print(f"meridian artifacts upload: {exc}", file=sys.stderr)
        return 2
    size = args.file.stat().st_size
    target = artifact_path(args.model, args.version, args.variant)
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), disable=args.no_progress,
    )  # fmt: skip
    with (
        httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=args.timeout
        ) as http,
        progress,
    ):
        hashing = progress.add_task("hashing  ", total=size)
        digest = sha256_of(args.file, lambda n: progress.advance(hashing, n))
        sending = progress.add_task("uploading", total=size)
        try:
            stored = upload(http, target, args.file, digest, lambda n: progress.advance(sending, n))
        except UploadError as exc:
            progress.stop()
            print(f"meridian artifacts upload: {exc}", file=sys.stderr)
            return 1
    if args.output == "json":
        print(json.dumps(stored, indent=2))
    else:
        ref = f"{args.model}:{args.version}" + (f":{args.variant}" if args.variant else "")
        print(f"{ref}: stored {size} bytes, sha256 {digest}")
    return 0
