"""End users' API keys: issued here, checked by the routers (which get digests and limits
through the keyring). A key is shown once, at creation; only its sha256 is kept."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from control_plane import schemas
from control_plane.db import models as m
from meridian.errors import Conflict, NotFound

from ._base import RegistryBase, new_secret, secret_hash, utc

KEY_PREFIX = "mrk"
SHOWN_PREFIX = 12  # characters of a key kept in clear, to recognise it ("mrk_" + 8)


def api_key_public(row: m.ApiKey) -> schemas.ApiKeyPublic:
    return schemas.ApiKeyPublic(
        name=row.name,
        prefix=row.key_prefix,
        rate_per_s=row.rate_per_s,
        burst=row.burst,
        models=list(row.models),
        tokens_per_minute=row.tokens_per_minute,
        priority="batch" if row.priority == "batch" else "interactive",
        deadline_ms=row.deadline_ms,
        created_at=utc(row.created_at),
        created_by=row.created_by,
        revoked_at=utc(row.revoked_at) if row.revoked_at else None,
        row_version=row.row_version,
    )


class KeyOps(RegistryBase):
    @staticmethod
    def _key_row(session: Session, name: str) -> m.ApiKey:
        row = session.scalar(sa.select(m.ApiKey).where(m.ApiKey.name == name))
        if row is None:
            raise NotFound(f"API key {name!r} not found")
        return row

    def create_api_key(self, data: schemas.ApiKeyCreate, *, actor: str) -> schemas.ApiKeyCreated:
        key = new_secret(KEY_PREFIX)
        with self._write() as s:
            if s.scalar(sa.select(m.ApiKey.id).where(m.ApiKey.name == data.name)):
                raise Conflict(
                    f"API key {data.name!r} already exists (names are never reused, even "
                    "after revocation)"
                )
            row = m.ApiKey(
                name=data.name,
                key_hash=secret_hash(key),
                key_prefix=key[:SHOWN_PREFIX],
                rate_per_s=data.rate_per_s,
                burst=data.burst,
                models=data.models,
                tokens_per_minute=data.tokens_per_minute,
                priority=data.priority,
                deadline_ms=data.deadline_ms,
                created_by=actor,
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "api_key", data.name, data.model_dump())
            public = api_key_public(row)
        return schemas.ApiKeyCreated(**public.model_dump(), key=key)

    def list_api_keys(
        self, *, include_revoked: bool = False, limit: int, offset: int
    ) -> schemas.Page[schemas.ApiKeyPublic]:
        query = sa.select(m.ApiKey).order_by(m.ApiKey.name)
        if not include_revoked:
            query = query.where(m.ApiKey.revoked_at.is_(None))
        with self._read() as s:
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[api_key_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def get_api_key(self, name: str) -> schemas.ApiKeyPublic:
        with self._read() as s:
            return api_key_public(self._key_row(s, name))

    def update_api_key(
        self, name: str, data: schemas.ApiKeyUpdate, *, expected_version: int | None, actor: str
    ) -> schemas.ApiKeyPublic:
        with self._write() as s:
            row = self._key_row(s, name)
            self._check_etag(row, expected_version, f"API key {name!r}")
            if row.revoked_at is not None:
                raise Conflict(f"API key {name!r} was revoked; issue a new one")
            patch = data.model_dump(exclude_unset=True)
            changed = self._changes(row, patch, frozenset({"tokens_per_minute", "deadline_ms"}))
            if changed:
                s.flush()
                self._audit(s, actor, "update", "api_key", name, changed)
            return api_key_public(row)

    def revoke_api_key(self, name: str, *, actor: str) -> schemas.ApiKeyPublic:
        """Revoke a key (idempotent); routers refuse it once the next keyring reaches them."""
        with self._write() as s:
            row = self._key_row(s, name)
            if row.revoked_at is None:
                row.revoked_at = m.utcnow()
                s.flush()
                self._audit(s, actor, "revoke", "api_key", name)
            return api_key_public(row)


__all__ = ["KEY_PREFIX", "KeyOps", "api_key_public"]
