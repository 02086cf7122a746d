"""The durable registry's schema (SQLAlchemy 2). Changes go through Alembic only."""
