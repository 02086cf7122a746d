"""API keys carry a request class (interactive | batch) and a default deadline.

Revision ID: 0008_key_classes
Revises: 0007_token_expiry
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_key_classes"
down_revision: str | None = "0007_token_expiry"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(
            sa.Column("priority", sa.String(16), nullable=False, server_default="interactive")
        )
        batch.add_column(sa.Column("deadline_ms", sa.Double(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_api_keys_known_priority"), "priority IN ('interactive', 'batch')"
        )
        batch.create_check_constraint(
            op.f("ck_api_keys_deadline_positive"), "deadline_ms IS NULL OR deadline_ms > 0"
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint(op.f("ck_api_keys_deadline_positive"), type_="check")
        batch.drop_constraint(op.f("ck_api_keys_known_priority"), type_="check")
        batch.drop_column("deadline_ms")
        batch.drop_column("priority")
