"""Alembic environment: the database URL comes from Oneiro's settings."""

from alembic import context
from sqlalchemy import pool

from shared.db import create_db_engine
from shared.models import Base
from shared.settings import load_settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    # A URL handed over in the config's attributes (tests do) wins over the environment.
    return config.attributes.get("database_url") or load_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_db_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Batch mode lets later migrations alter tables on SQLite, which lacks most ALTERs.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
