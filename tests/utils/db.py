"""Test databases: a PostgreSQL database of a test's own, Alembic pointed at a database."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.config import Config

from tests.utils.paths import ROOT

POSTGRES_ADMIN_URL = os.environ.get(
    "ONEIRO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def alembic_config(database_url: str) -> Config:
    """The project's Alembic configuration, migrating the database at `database_url`."""
    config = Config(toml_file=str(ROOT / "pyproject.toml"))
    config.attributes["database_url"] = database_url
    return config


def running_on_ci() -> bool:
    """Whether CI is set to true, as CI services set it."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def postgres_database(template: str | None = None) -> Iterator[str]:
    """Yields the URL of a new PostgreSQL database, dropped afterwards: empty, or a copy of the
    database named `template` (which nothing may be connected to meanwhile). Skips the test
    (fails it on CI) when no PostgreSQL answers at ONEIRO_TEST_POSTGRES_URL."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    copy_of = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as connection:
            name = f"oneiro_test_{uuid.uuid4().hex[:12]}"
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{copy_of}'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        unreachable = (
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} "
            f"(set ONEIRO_TEST_POSTGRES_URL): {exc.orig}"
        )
    else:
        unreachable = None
    if unreachable is not None:
        # On CI a skip would pass green with a third of the suite unrun.
        if running_on_ci():
            pytest.fail(f"{unreachable}; CI is set, so this fails instead of skipping", False)
        pytest.skip(unreachable)
    try:
        yield (
            sa.engine.make_url(POSTGRES_ADMIN_URL)
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
