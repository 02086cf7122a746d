"""Model versions may be generative (an archive of a causal language model's folder).

Revision ID: 0005_generative_format
Revises: 0004_api_keys
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005_generative_format"
down_revision: str | None = "0004_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # PostgreSQL keeps the enum as a type; SQLite stores the name without a constraint.
    if op.get_bind().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.execute("ALTER TYPE model_format ADD VALUE IF NOT EXISTS 'generative'")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # PostgreSQL cannot drop one value: rebuild the type without it (this fails
        # while a version is still generative).
        op.execute("ALTER TYPE model_format RENAME TO model_format_old")
        op.execute("CREATE TYPE model_format AS ENUM ('onnx', 'torchscript')")
        op.execute(
            "ALTER TABLE model_versions ALTER COLUMN format TYPE model_format "
            "USING format::text::model_format"
        )
        op.execute("DROP TYPE model_format_old")
