"""Models, their versions, quantized variants and artifacts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

import anyio
import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from control_plane import schemas
from control_plane.artifacts import parse_sha256
from control_plane.db import models as m
from meridian.errors import Conflict, NotFound, PayloadTooLarge

from ._base import RegistryBase, model_public, variant_public, version_public

EXTENSIONS = {
    m.ModelFormat.ONNX: "onnx",
    m.ModelFormat.TORCHSCRIPT: "pt",
    m.ModelFormat.GENERATIVE: "tar",
}


@dataclass(frozen=True)
class ArtifactInfo:
    uri: str
    sha256: str
    size: int
    filename: str


def _ref(model: str, version: str, variant: str | None = None) -> str:
    return f"{model}:{version}" + (f":{variant}" if variant else "")


class CatalogOps(RegistryBase):
    # --- lookups -------------------------------------------------------------

    def _variant_row(
        self, session: Session, model: str, version: str, variant: str
    ) -> m.ModelVariant:
        mv = self._version_row(session, model, version)
        for row in mv.variants:
            if row.name == variant:
                return row
        raise NotFound(f"variant {variant!r} of {_ref(model, version)} not found")

    @staticmethod
    def _deployed_regions(session: Session, version_ids: list[int]) -> list[str]:
        if not version_ids:
            return []
        return list(
            session.scalars(
                sa.select(m.Region.name)
                .join(m.Deployment)
                .where(m.Deployment.model_version_id.in_(version_ids))
                .distinct()
                .order_by(m.Region.name)
            )
        )

    def _drop_files(self, uris: list[str]) -> None:
        """Remove artifact files after the rows pointing at them are gone (best effort)."""
        for uri in uris:
            with contextlib.suppress(Exception):
                self.store.delete(uri)

    # --- models --------------------------------------------------------------

    def create_model(self, data: schemas.ModelCreate, *, actor: str) -> schemas.ModelPublic:
        with self._write() as s:
            if s.scalar(sa.select(m.Model.id).where(m.Model.name == data.name)):
                raise Conflict(f"model {data.name!r} already exists")
            row = m.Model(name=data.name, description=data.description)
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "model", data.name, data.model_dump())
            return model_public(row)

    def list_models(self, *, limit: int, offset: int) -> schemas.Page[schemas.ModelPublic]:
        with self._read() as s:
            query = (
                sa.select(m.Model).options(selectinload(m.Model.versions)).order_by(m.Model.name)
            )
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[model_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def get_model(self, name: str) -> schemas.ModelPublic:
        with self._read() as s:
            return model_public(self._model_row(s, name))

    def update_model(
        self, name: str, data: schemas.ModelUpdate, *, expected_version: int | None, actor: str
    ) -> schemas.ModelPublic:
        with self._write() as s:
            row = self._model_row(s, name)
            self._check_etag(row, expected_version, f"model {name!r}")
            changed = self._changes(row, data.model_dump(exclude_unset=True))
            if changed:
                s.flush()
                self._audit(s, actor, "update", "model", name, changed)
            return model_public(row)

    def delete_model(self, name: str, *, expected_version: int | None, actor: str) -> None:
        with self._write() as s:
            row = self._model_row(s, name)
            self._check_etag(row, expected_version, f"model {name!r}")
            regions = self._deployed_regions(s, [v.id for v in row.versions])
            if regions:
                raise Conflict(
                    f"model {name!r} is deployed in {', '.join(regions)}; delete those "
                    "deployments first"
                )
            uris = [v.artifact_uri for v in row.versions if v.artifact_uri]
            uris += [x.artifact_uri for v in row.versions for x in v.variants if x.artifact_uri]
            s.delete(row)
            s.flush()
            self._audit(s, actor, "delete", "model", name)
        self._drop_files(uris)

    # --- versions ------------------------------------------------------------

    def create_version(
        self, model: str, data: schemas.VersionCreate, *, actor: str
    ) -> schemas.VersionPublic:
        with self._write() as s:
            parent = self._model_row(s, model)
            if any(v.version == data.version for v in parent.versions):
                raise Conflict(f"{_ref(model, data.version)} already exists")
            payload = data.model_dump(mode="json")
            row = m.ModelVersion(
                model=parent,
                version=data.version,
                format=data.format,
                inputs=payload["inputs"],
                outputs=payload["outputs"],
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "model_version", _ref(model, data.version), payload)
            return version_public(row)

    def list_versions(
        self, model: str, *, limit: int, offset: int
    ) -> schemas.Page[schemas.VersionPublic]:
        with self._read() as s:
            parent = self._model_row(s, model)
            query = (
                sa.select(m.ModelVersion)
                .where(m.ModelVersion.model_id == parent.id)
                .options(selectinload(m.ModelVersion.variants))
                .order_by(m.ModelVersion.id)
            )
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[version_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def get_version(self, model: str, version: str) -> schemas.VersionPublic:
        with self._read() as s:
            return version_public(self._version_row(s, model, version))

    def update_version(
        self,
        model: str,
        version: str,
        data: schemas.VersionUpdate,
        *,
        expected_version: int | None,
        actor: str,
    ) -> schemas.VersionPublic:
        with self._write() as s:
            row = self._version_row(s, model, version)
            self._check_etag(row, expected_version, _ref(model, version))
            patch = data.model_dump(mode="json", exclude_unset=True)
            if "format" in patch and patch["format"] is not None:
                patch["format"] = m.ModelFormat(patch["format"])
                if row.artifact_sha256 and patch["format"] != row.format:
                    raise Conflict(
                        f"the artifact of {_ref(model, version)} is uploaded; its format "
                        "cannot change (register a new version)"
                    )
            changed = self._changes(row, patch)
            if changed:
                s.flush()
                self._audit(s, actor, "update", "model_version", _ref(model, version), changed)
            return version_public(row)

    def delete_version(
        self, model: str, version: str, *, expected_version: int | None, actor: str
    ) -> None:
        with self._write() as s:
            row = self._version_row(s, model, version)
            self._check_etag(row, expected_version, _ref(model, version))
            regions = self._deployed_regions(s, [row.id])
            if regions:
                raise Conflict(
                    f"{_ref(model, version)} is deployed in {', '.join(regions)}; delete "
                    "those deployments first"
                )
            uris = [row.artifact_uri] if row.artifact_uri else []
            uris += [x.artifact_uri for x in row.variants if x.artifact_uri]
            s.delete(row)
            s.flush()
            self._audit(s, actor, "delete", "model_version", _ref(model, version))
        self._drop_files(uris)

    # --- variants ------------------------------------------------------------

    def create_variant(
        self, model: str, version: str, data: schemas.VariantCreate, *, actor: str
    ) -> schemas.VariantPublic:
        with self._write() as s:
            mv = self._version_row(s, model, version)
            if any(v.name == data.name for v in mv.variants):
                raise Conflict(f"variant {_ref(model, version, data.name)} already exists")
            row = m.ModelVariant(
                model_version=mv,
                name=data.name,
                description=data.description,
                max_abs_error=data.max_abs_error,
            )
            s.add(row)
            s.flush()
            key = _ref(model, version, data.name)
            self._audit(s, actor, "create", "model_variant", key, data.model_dump())
            return variant_public(row)

    def list_variants(
        self, model: str, version: str, *, limit: int, offset: int
    ) -> schemas.Page[schemas.VariantPublic]:
        with self._read() as s:
            mv = self._version_row(s, model, version)
            query = (
                sa.select(m.ModelVariant)
                .where(m.ModelVariant.model_version_id == mv.id)
                .order_by(m.ModelVariant.name)
            )
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[variant_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def get_variant(self, model: str, version: str, variant: str) -> schemas.VariantPublic:
        with self._read() as s:
            return variant_public(self._variant_row(s, model, version, variant))

    def delete_variant(self, model: str, version: str, variant: str, *, actor: str) -> None:
        with self._write() as s:
            row = self._variant_row(s, model, version, variant)
            users = s.scalars(
                sa.select(m.Region.name)
                .join(m.Deployment)
                .where(
                    m.Deployment.model_version_id == row.model_version_id,
                    sa.or_(m.Deployment.variant == variant, m.Deployment.degrade_to == variant),
                )
                .order_by(m.Region.name)
            ).all()
            if users:
                raise Conflict(
                    f"variant {_ref(model, version, variant)} is deployed in "
                    f"{', '.join(users)} (served, or as degrade_to); change or delete those "
                    "deployments first"
                )
            uris = [row.artifact_uri] if row.artifact_uri else []
            s.delete(row)
            s.flush()
            self._audit(s, actor, "delete", "model_variant", _ref(model, version, variant))
        self._drop_files(uris)

    # --- artifacts -----------------------------------------------------------

    def _artifact_row(
        self, s: Session, model: str, version: str, variant: str | None
    ) -> m.ModelVersion | m.ModelVariant:
        if variant is None:
            return self._version_row(s, model, version)
        return self._variant_row(s, model, version, variant)

    def _prepare_upload(self, model: str, version: str, variant: str | None, sha: str) -> str:
        """Check the target exists and can take this artifact; return the storage key."""
        with self._read() as s:
            row = self._artifact_row(s, model, version, variant)
            self._refuse_replacement(row, sha, _ref(model, version, variant))
            version_id = row.model_version_id if isinstance(row, m.ModelVariant) else row.id
            return f"models/{version_id}/{variant or 'base'}/{sha}"

    @staticmethod
    def _refuse_replacement(row: m.ModelVersion | m.ModelVariant, sha: str, ref: str) -> None:
        if row.artifact_sha256 and row.artifact_sha256 != sha:
            raise Conflict(
                f"{ref} already has an artifact (sha256 {row.artifact_sha256}); artifacts "
                "are immutable, register a new version instead"
            )

    def _attach(
        self,
        model: str,
        version: str,
        variant: str | None,
        uri: str,
        sha: str,
        size: int,
        actor: str,
    ) -> schemas.VersionPublic | schemas.VariantPublic:
        ref = _ref(model, version, variant)
        with self._write() as s:
            row = self._artifact_row(s, model, version, variant)
            self._refuse_replacement(row, sha, ref)
            if row.artifact_sha256 != sha:
                row.artifact_uri, row.artifact_sha256, row.artifact_size = uri, sha, size
                s.flush()
                entity = "model_version" if variant is None else "model_variant"
                self._audit(s, actor, "upload", entity, ref, {"sha256": sha, "size": size})
            if isinstance(row, m.ModelVariant):
                return variant_public(row)
            return version_public(row)

    def _discard_if_unreferenced(self, uri: str) -> None:
        with contextlib.suppress(Exception), self._read() as s:
            for table in (m.ModelVersion, m.ModelVariant):
                if s.scalar(sa.select(table.id).where(table.artifact_uri == uri)):
                    return
            self.store.delete(uri)

    async def upload_artifact(
        self,
        model: str,
        version: str,
        variant: str | None,
        chunks: AsyncIterable[bytes],
        *,
        declared_sha256: str | None,
        content_length: int | None,
        actor: str,
    ) -> schemas.VersionPublic | schemas.VariantPublic:
        """Stream an artifact into the store, verify it, then point the registry at it.

        The file is durable before the row refers to it, so an acknowledged upload
        is never lost; a failed upload leaves neither a row change nor a file.
        """
        sha = parse_sha256(declared_sha256)
        if content_length is not None and content_length > self.max_artifact_bytes:
            raise PayloadTooLarge(
                f"artifact of {content_length} bytes is over the limit of "
                f"{self.max_artifact_bytes} bytes"
            )
        key = await anyio.to_thread.run_sync(self._prepare_upload, model, version, variant, sha)
        stored = await self.store.put(
            key, chunks, expected_sha256=sha, max_bytes=self.max_artifact_bytes
        )
        try:
            return await anyio.to_thread.run_sync(
                self._attach, model, version, variant, stored.uri, sha, stored.size, actor
            )
        except BaseException:
            await anyio.to_thread.run_sync(self._discard_if_unreferenced, stored.uri)
            raise

    def describe_artifact(self, model: str, version: str, variant: str | None) -> ArtifactInfo:
        """Where an uploaded artifact is, its digest, size and a download file name."""
        with self._read() as s:
            row = self._artifact_row(s, model, version, variant)
            if not (row.artifact_uri and row.artifact_sha256 and row.artifact_size is not None):
                raise NotFound(f"{_ref(model, version, variant)} has no artifact uploaded yet")
            mv = row if isinstance(row, m.ModelVersion) else row.model_version
            stem = "-".join(p for p in (model, version, variant) if p)
            return ArtifactInfo(
                uri=row.artifact_uri,
                sha256=row.artifact_sha256,
                size=row.artifact_size,
                filename=f"{stem}.{EXTENSIONS[mv.format]}",
            )

    async def open_artifact(
        self, model: str, version: str, variant: str | None
    ) -> tuple[ArtifactInfo, AsyncIterator[bytes]]:
        info = await anyio.to_thread.run_sync(self.describe_artifact, model, version, variant)
        return info, await self.store.open(info.uri)
