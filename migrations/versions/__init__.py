"""Revisions of the registry schema (loaded by Alembic by path)."""
