"""API tokens, authentication of callers, and reading the audit log."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import sqlalchemy as sa

from control_plane import schemas
from control_plane.db import models as m
from meridian.errors import Conflict, MeridianError, NotFound, Unauthenticated

from ._base import RegistryBase, audit_public, new_secret, secret_hash, token_public, utc

TOKEN_PREFIX = "mrd"
SCOPES = ("admin", "read", "agent")
# last_used_at is written at most this often per token (not a write per request)
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)

log = logging.getLogger("meridian.control_plane")


def _expiry(expires_in_s: int | None) -> dt.datetime | None:
    return None if expires_in_s is None else m.utcnow() + dt.timedelta(seconds=expires_in_s)


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token, or a region agent by its credential."""

    name: str
    scopes: frozenset[str]
    region: str | None = None

    def allows(self, *scopes: str) -> bool:
        """``admin`` may do everything; otherwise one of ``scopes`` is needed."""
        return "admin" in self.scopes or not self.scopes.isdisjoint(scopes)


class AccessOps(RegistryBase):
    # --- tokens ----------------------------------------------------------------

    def create_token(self, data: schemas.TokenCreate, *, actor: str) -> schemas.TokenCreated:
        token = new_secret(TOKEN_PREFIX)
        with self._write() as s:
            row = m.ApiToken(
                name=data.name,
                token_hash=secret_hash(token),
                scopes=" ".join(data.scopes),
                created_by=actor,
                expires_at=_expiry(data.expires_in_s),
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "create", "api_token", f"{row.id}:{row.name}", data.model_dump())
            public = token_public(row)
        return schemas.TokenCreated(**public.model_dump(), token=token)

    def rotate_token(
        self, token_id: int, data: schemas.TokenRotate, *, actor: str
    ) -> schemas.TokenCreated:
        """A new token with the old one's name and scopes; the old one stops working at once."""
        token = new_secret(TOKEN_PREFIX)
        with self._write() as s:
            old = s.get(m.ApiToken, token_id)
            if old is None:
                raise NotFound(f"token {token_id} not found")
            if old.revoked_at is not None:
                raise Conflict(f"token {token_id} was revoked; create a new one instead")
            old.revoked_at = m.utcnow()
            row = m.ApiToken(
                name=old.name,
                token_hash=secret_hash(token),
                scopes=old.scopes,
                created_by=actor,
                expires_at=_expiry(data.expires_in_s),
            )
            s.add(row)
            s.flush()
            self._audit(s, actor, "rotate", "api_token", f"{old.id}:{old.name}", {"new_id": row.id})
            public = token_public(row)
        return schemas.TokenCreated(**public.model_dump(), token=token)

    def ensure_token(self, token: str, *, name: str, scopes: list[str], actor: str) -> bool:
        """Make sure ``token`` exists (by hash); True when it had to be added.

        A token that exists but was revoked stays revoked: revocation wins over
        configuration.
        """
        digest = secret_hash(token)
        exists = sa.select(m.ApiToken.id).where(m.ApiToken.token_hash == digest)
        try:
            with self._write() as s:
                if s.scalar(exists):
                    return False
                row = m.ApiToken(
                    name=name, token_hash=digest, scopes=" ".join(scopes), created_by=actor
                )
                s.add(row)
                s.flush()
                audit = {"scopes": scopes}
                self._audit(s, actor, "create", "api_token", f"{row.id}:{name}", audit)
                return True
        except Conflict:
            # replicas starting at the same moment: another one added it first
            with self._read() as s:
                if s.scalar(exists):
                    return False
            raise

    def has_active_admin_token(self) -> bool:
        with self._read() as s:
            rows = s.scalars(
                sa.select(m.ApiToken.scopes).where(m.ApiToken.revoked_at.is_(None))
            ).all()
            return any("admin" in scopes.split() for scopes in rows)

    def list_tokens(
        self, *, include_revoked: bool = False, limit: int, offset: int
    ) -> schemas.Page[schemas.TokenPublic]:
        query = sa.select(m.ApiToken).order_by(m.ApiToken.id)
        if not include_revoked:
            query = query.where(m.ApiToken.revoked_at.is_(None))
        with self._read() as s:
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[token_public(r) for r in rows], total=total, limit=limit, offset=offset
            )

    def revoke_token(self, token_id: int, *, actor: str) -> schemas.TokenPublic:
        """Revoke a token (idempotent); it stops working at once."""
        with self._write() as s:
            row = s.get(m.ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id} not found")
            if row.revoked_at is None:
                row.revoked_at = m.utcnow()
                s.flush()
                self._audit(s, actor, "revoke", "api_token", f"{row.id}:{row.name}")
            return token_public(row)

    # --- authentication ------------------------------------------------------------

    def authenticate(self, bearer: str) -> Principal:
        """The caller behind a bearer secret: an API token, else a region credential.

        A region agent may present its agent credential to fetch artifacts; it
        then holds the ``agent`` scope only.
        """
        if not bearer:
            raise Unauthenticated("a bearer token is required")
        digest = secret_hash(bearer)
        now = m.utcnow()
        with self._read() as s:
            token = s.scalar(sa.select(m.ApiToken).where(m.ApiToken.token_hash == digest))
            if token is None:
                region = s.scalar(
                    sa.select(m.Region).where(m.Region.agent_credential_hash == digest)
                )
                if region is not None and region.status != m.RegionStatus.DISABLED:
                    return Principal(
                        name=f"region:{region.name}",
                        scopes=frozenset({"agent"}),
                        region=region.name,
                    )
                raise Unauthenticated("unknown or revoked token")
            if token.revoked_at is not None:
                raise Unauthenticated("this token was revoked")
            if token.expires_at is not None and utc(token.expires_at) <= now:
                raise Unauthenticated(
                    f"this token expired at {utc(token.expires_at):%Y-%m-%d %H:%M:%S} UTC"
                )
            token_id, last = token.id, token.last_used_at
            principal = Principal(name=token.name, scopes=frozenset(token.scopes.split()))
        if last is None or now - utc(last) >= LAST_USED_RESOLUTION:
            self._note_use(token_id, now)
        return principal

    def _note_use(self, token_id: int, now: dt.datetime) -> None:
        """Record ``last_used_at``; the condition keeps concurrent replicas (and requests) to
        one write a minute. A failure here never fails the request it authenticated."""
        stale = now - LAST_USED_RESOLUTION
        try:
            with self._write() as s:
                s.execute(
                    sa.update(m.ApiToken)
                    .where(
                        m.ApiToken.id == token_id,
                        sa.or_(m.ApiToken.last_used_at.is_(None), m.ApiToken.last_used_at <= stale),
                    )
                    .values(last_used_at=now)
                )
        except MeridianError as exc:
            log.warning("could not record the use of token %d: %s", token_id, exc.message)

    # --- audit ---------------------------------------------------------------------

    def list_audit(
        self,
        *,
        entity: str | None = None,
        entity_key: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        limit: int,
        offset: int,
    ) -> schemas.Page[schemas.AuditPublic]:
        """Newest first."""
        query = sa.select(m.AuditEntry).order_by(m.AuditEntry.id.desc())
        for column, value in (
            (m.AuditEntry.entity, entity),
            (m.AuditEntry.entity_key, entity_key),
            (m.AuditEntry.actor, actor),
            (m.AuditEntry.action, action),
        ):
            if value is not None:
                query = query.where(column == value)
        with self._read() as s:
            rows, total = self._page(s, query, limit, offset)
            return schemas.Page(
                items=[audit_public(r) for r in rows], total=total, limit=limit, offset=offset
            )


__all__ = ["SCOPES", "AccessOps", "Principal", "utc"]
