"""`oneiro keys`: make and revoke API keys and set tenants' weights, straight in the database
at DATABASE_URL (an operator's command; SQLAlchemy is imported only when it runs)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click


@click.group()
def keys() -> None:
    """Make and revoke API keys, set tenants' weights (in the database at DATABASE_URL)."""


@contextlib.contextmanager
def _session() -> Iterator[Any]:
    from shared.db import create_db_engine, create_session_factory
    from shared.settings import SettingsError, get_settings

    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    engine = create_db_engine(settings.database_url)
    try:
        _require_schema(engine)
        with create_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


def _require_schema(engine: Any) -> None:
    """Stop with one line, not a SQLAlchemy traceback, when the keys' tables were never made."""
    from sqlalchemy import inspect

    from shared.models import ApiKey, Tenant

    found = inspect(engine)
    if not all(found.has_table(model.__tablename__) for model in (Tenant, ApiKey)):
        raise click.ClickException(
            "the database at DATABASE_URL has no schema yet: create it with "
            "`alembic upgrade head` (`make run` does this first)"
        )


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key belongs to; made if new.")
def create_key_command(tenant: str) -> None:
    """Make a key for TENANT and print it (it is shown only this once)."""
    from shared.tenants import TenantError, create_key

    with _session() as session:
        try:
            made = create_key(session, tenant)
        except TenantError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(made.key)
    click.echo(f"tenant {made.tenant!r}, key prefix {made.prefix}", err=True)
    if made.webhook_secret:
        click.echo(
            f"new tenant: its webhook signing secret is {made.webhook_secret} (shown once)",
            err=True,
        )


@keys.command("revoke")
@click.argument("key_or_prefix")
def revoke_key_command(key_or_prefix: str) -> None:
    """Revoke a key, given whole or by the prefix `keys create` printed."""
    from shared.tenants import revoke_key

    with _session() as session:
        revoked = revoke_key(session, key_or_prefix)
    if not revoked:
        raise click.ClickException(f"no live key matches {key_or_prefix!r}")
    click.echo(f"revoked {revoked} key(s)")


@keys.command("weight")
@click.option("--tenant", required=True, help="The tenant whose share to set.")
@click.argument("weight", type=click.FloatRange(min=0, min_open=True, max=1000))
def weight_command(tenant: str, weight: float) -> None:
    """Set TENANT's share of the farm: with weight 2 it gets twice the workers of a tenant of
    weight 1 while both have jobs waiting (default 1)."""
    from shared.tenants import TenantError, set_weight

    with _session() as session:
        try:
            set_weight(session, tenant, weight)
        except TenantError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"tenant {tenant!r} now has weight {weight:g}")
