"""Deployments may name a quantized variant to serve a saturated region's overflow.

Revision ID: 0010_degrade_to
Revises: 0009_rollouts
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_degrade_to"
down_revision: str | None = "0009_rollouts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("degrade_to", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("degrade_to")
