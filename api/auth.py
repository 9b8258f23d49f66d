"""Who is calling: every /v1 request carries `Authorization: Bearer <key>` of a tenant, and is
counted against that tenant's request rate."""

from __future__ import annotations

import uuid

from flask import Flask, g, request
from flask_limiter import Limiter

from api.problems import Problem
from shared.models import Tenant
from shared.settings import Settings
from shared.tenants import authenticate


def current_tenant() -> Tenant:
    """The tenant of this request's key; 401 problem+json when there is no live key."""
    tenant = _tenant_or_none()
    if tenant is None:
        raise Problem(
            401,
            "Unauthorized",
            "send 'Authorization: Bearer <key>' with a live API key "
            "(make one with `oneiro keys create --tenant NAME`)",
            headers={"WWW-Authenticate": 'Bearer realm="oneiro"'},
        )
    return tenant


def tenant_id() -> uuid.UUID:
    return current_tenant().id


def _tenant_or_none() -> Tenant | None:
    if "tenant" not in g:
        from api.jobs import db

        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        g.tenant = authenticate(db(), key.strip()) if scheme.lower() == "bearer" else None
    return g.tenant  # type: ignore[no-any-return]


def _rate_key() -> str:
    # Counted per tenant; a request without a valid key is counted by address, and then refused.
    tenant = _tenant_or_none()
    return f"tenant:{tenant.id}" if tenant is not None else f"addr:{request.remote_addr}"


def create_limiter(app: Flask, settings: Settings) -> Limiter:
    """Flask-Limiter counting in Redis. Were Redis away, each API process counts in its own
    memory until Redis is back: a rate limit must not take the API down with it."""
    limiter = Limiter(
        _rate_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        # Two counters per tenant instead of a list of timestamps: cheap at hundreds per second.
        strategy="sliding-window-counter",
        headers_enabled=True,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="oneiro-rate",
    )
    return limiter
