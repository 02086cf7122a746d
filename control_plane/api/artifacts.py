"""Artifact bytes of a version or a variant: streamed up (PUT) and down (GET/HEAD).

``PUT`` takes the raw file as the body (``application/octet-stream``) and its
sha256 in ``X-Artifact-Sha256``; the digest is verified before the artifact is
accepted. Artifacts are immutable once uploaded.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from control_plane.registry import ArtifactInfo
from control_plane.schemas import VariantPublic, VersionPublic
from meridian.errors import InvalidInput

from .deps import Admin, CatalogReader, RegistryDep
from .errors import WRITE, error_responses

router = APIRouter(tags=["artifacts"])

VERSION_PATH = "/models/{name}/versions/{version}/artifact"
VARIANT_PATH = "/models/{name}/versions/{version}/variants/{variant}/artifact"

_RAW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_UPLOAD = error_responses(*WRITE, 413)
_DOWNLOAD: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    },
    **error_responses(404),
}
_HEAD = error_responses(404)
Sha256Header = Annotated[
    str | None, Header(alias="X-Artifact-Sha256", description="sha256 hex digest of the body")
]


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _headers(info: ArtifactInfo) -> dict[str, str]:
    return {
        "Content-Length": str(info.size),
        "ETag": f'"{info.sha256}"',
        "X-Artifact-Sha256": info.sha256,
        "Content-Disposition": f'attachment; filename="{info.filename}"',
    }


async def _upload(
    request: Request,
    registry: RegistryDep,
    name: str,
    version: str,
    variant: str | None,
    sha: str | None,
    actor: str,
) -> VersionPublic | VariantPublic:
    try:
        return await registry.upload_artifact(
            name,
            version,
            variant,
            request.stream(),
            declared_sha256=sha,
            content_length=_content_length(request),
            actor=actor,
        )
    except ClientDisconnect as exc:
        raise InvalidInput("the client disconnected before the artifact was complete") from exc


async def _download(
    registry: RegistryDep, name: str, version: str, variant: str | None
) -> StreamingResponse:
    info, chunks = await registry.open_artifact(name, version, variant)
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=_headers(info))


@router.put(VERSION_PATH, openapi_extra=_RAW_BODY, responses=_UPLOAD)
async def upload_version_artifact(
    name: str,
    version: str,
    request: Request,
    registry: RegistryDep,
    caller: Admin,
    sha: Sha256Header = None,
) -> VersionPublic:
    result = await _upload(request, registry, name, version, None, sha, caller.name)
    assert isinstance(result, VersionPublic)
    return result


@router.get(VERSION_PATH, response_class=StreamingResponse, responses=_DOWNLOAD)
async def download_version_artifact(
    name: str, version: str, registry: RegistryDep, _: CatalogReader
) -> StreamingResponse:
    return await _download(registry, name, version, None)


@router.head(VERSION_PATH, responses=_HEAD)
def head_version_artifact(
    name: str, version: str, registry: RegistryDep, _: CatalogReader
) -> Response:
    return Response(headers=_headers(registry.describe_artifact(name, version, None)))


@router.put(VARIANT_PATH, openapi_extra=_RAW_BODY, responses=_UPLOAD)
async def upload_variant_artifact(
    name: str,
    version: str,
    variant: str,
    request: Request,
    registry: RegistryDep,
    caller: Admin,
    sha: Sha256Header = None,
) -> VariantPublic:
    result = await _upload(request, registry, name, version, variant, sha, caller.name)
    assert isinstance(result, VariantPublic)
    return result


@router.get(VARIANT_PATH, response_class=StreamingResponse, responses=_DOWNLOAD)
async def download_variant_artifact(
    name: str, version: str, variant: str, registry: RegistryDep, _: CatalogReader
) -> StreamingResponse:
    return await _download(registry, name, version, variant)


@router.head(VARIANT_PATH, responses=_HEAD)
def head_variant_artifact(
    name: str, version: str, variant: str, registry: RegistryDep, _: CatalogReader
) -> Response:
    return Response(headers=_headers(registry.describe_artifact(name, version, variant)))
