"""The registry: the one core object behind the REST admin API (and gRPC for agents).

Every change runs in one transaction together with its audit entry; stale
writes (ETag / ``row_version`` mismatch, or a concurrent update caught by
SQLAlchemy) fail with 412; conflicts with existing state fail with 409.
"""

from __future__ import annotations

from pathlib import Path

from control_plane.artifacts import ArtifactStore, LocalArtifactStore
from control_plane.db.session import Database, create_database
from control_plane.rollouts.ops import RolloutOps

from .access import SCOPES, AccessOps, Principal
from .catalog import ArtifactInfo, CatalogOps
from .fleet import FleetOps
from .keys import KeyOps

__all__ = ["SCOPES", "ArtifactInfo", "Principal", "Registry"]


class Registry(CatalogOps, FleetOps, AccessOps, KeyOps, RolloutOps):
    """Models, versions, variants, artifacts, regions, deployments, tokens, end users' API
    keys, rollouts, audit."""

    @classmethod
    def open(
        cls,
        database_url: str,
        artifact_dir: Path,
        *,
        max_artifact_bytes: int,
        store: ArtifactStore | None = None,
    ) -> Registry:
        db: Database = create_database(database_url)
        return cls(
            db, store or LocalArtifactStore(artifact_dir), max_artifact_bytes=max_artifact_bytes
        )

    def close(self) -> None:
        self.db.dispose()
