"""Autoscaling: operators may pin a deployment to a fixed number of replicas.

Revision ID: 0002_autoscale
Revises: 0001_registry
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_autoscale"
down_revision: str | None = "0001_registry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a CHECK constraint to an existing table in place
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column("autoscale_pinned", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("pinned_replicas", sa.Integer(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_deployments_pinned_replicas_nonnegative"),
            "pinned_replicas IS NULL OR pinned_replicas >= 0",
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint(op.f("ck_deployments_pinned_replicas_nonnegative"), type_="check")
        batch.drop_column("pinned_replicas")
        batch.drop_column("autoscale_pinned")
