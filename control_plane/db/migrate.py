"""Running the Alembic migrations from code (no ``alembic.ini`` needed).

The script location is the installed ``migrations`` package, so this works from
a wheel as well as from a checkout.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

import migrations

from .session import normalize_url

__all__ = ["HEAD", "alembic_config", "current_revision", "downgrade", "revision", "upgrade"]

HEAD = "head"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    # ConfigParser interpolation: a literal % must be doubled
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = HEAD) -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def revision(url: str, message: str, rev_id: str) -> None:
    """Draft a new revision by comparing the models with a database at head (review it!)."""
    command.revision(alembic_config(url), message=message, autogenerate=True, rev_id=rev_id)


def current_revision(url: str) -> str | None:
    """The revision the database is at (``None`` when never migrated)."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    from .session import create_engine

    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
