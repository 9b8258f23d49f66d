"""Alembic owns the schema: it builds it, matches the models, and takes it down again."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.models import Base
from tests.utils import alembic_config


def test_upgrade_matches_the_models_and_downgrade_removes_everything(
    empty_database_url: str,
) -> None:
    config = alembic_config(empty_database_url)
    engine = sa.create_engine(empty_database_url)
    try:
        command.upgrade(config, "head")
        with engine.connect() as connection:
            assert "jobs" in sa.inspect(connection).get_table_names()
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
            assert differences == []

        command.downgrade(config, "base")
        with engine.connect() as connection:
            assert set(sa.inspect(connection).get_table_names()) <= {"alembic_version"}

        command.upgrade(config, "head")  # and back up, clean
    finally:
        engine.dispose()
