"""Who is calling: every /v1 request carries `Authorization: Bearer <key>` of a tenant, and is
counted against that tenant's request rate."""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import dataclass

from cachetools import TTLCache
from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit
from sqlalchemy.orm import Session, sessionmaker

from api.db import services
from api.problems import Problem
from shared.settings import Settings
from shared.tenants import authenticate, hash_key


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts for."""

    id: uuid.UUID
    name: str


class KeyCache:
    """Live keys seen lately, so a busy client costs one database read per key every
    auth_cache_seconds rather than one per request. A revoked key therefore works at most that
    much longer; unknown keys are never cached (a new key works at once)."""

    def __init__(self, seconds: float) -> None:
        self._cache: TTLCache[str, Caller] | None = (
            TTLCache(maxsize=100_000, ttl=seconds) if seconds > 0 else None
        )
        self._lock = threading.Lock()

    def caller(self, key: str, sessions: sessionmaker[Session] | None = None) -> Caller | None:
        """The tenant of a live key (read with `sessions`, this app's by default), or None."""
        digest = hash_key(key)
        if self._cache is not None:
            with self._lock:
                cached = self._cache.get(digest)
            if cached is not None:
                return cached
        # A session of its own, closed at once: the request's session would keep the connection
        # while a slow client sends its body, and a few such clients would empty the pool.
        with (sessions or services().sessions)() as session:
            tenant = authenticate(session, key)
        if tenant is None:
            return None
        caller = Caller(tenant.id, tenant.name)
        if self._cache is not None:
            with self._lock:
                self._cache[digest] = caller
        return caller


def current_tenant() -> Caller:
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


def require_key() -> None:
    """A blueprint's before_request: every /v1 route answers 401 without a live key."""
    current_tenant()


def tenant_id() -> uuid.UUID:
    return current_tenant().id


def bearer_key() -> str | None:
    """The key this request carries in `Authorization: Bearer <key>`, if any."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    return key.strip() if scheme.lower() == "bearer" and key.strip() else None


def _tenant_or_none() -> Caller | None:
    if "tenant" not in g:
        key = bearer_key()
        keys: KeyCache = current_app.extensions["oneiro-keys"]
        g.tenant = keys.caller(key) if key else None
    return g.tenant


def _rate_key() -> str:
    # Counted per tenant; a request without a valid key is counted by address, and then refused.
    tenant = _tenant_or_none()
    return f"tenant:{tenant.id}" if tenant is not None else f"addr:{request.remote_addr}"


def _too_many(limit: RequestLimit) -> Response:
    """The 429 of a tenant over its request rate, saying when to come back."""
    # Never past one window: by then the tenant's count has surely fallen below the limit.
    wait = min(max(1, math.ceil(limit.reset_at - time.time())), limit.limit.get_expiry())
    return Problem(
        429,
        "Too Many Requests",
        f"this tenant is over its request rate of {limit.limit}; try again in {wait} s",
        headers={"Retry-After": str(wait)},
        limit=str(limit.limit),
    ).response()


def create_limiter(app: Flask, settings: Settings) -> Limiter:
    """Flask-Limiter counting in Redis. Were Redis away, each API process counts in its own
    memory until Redis is back: a rate limit must not take the API down with it."""
    app.extensions["oneiro-keys"] = KeyCache(settings.auth_cache_seconds)
    limiter = Limiter(
        _rate_key,
        app=app,
        storage_uri=settings.redis_url,
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 1},
        # Two counters per tenant instead of a list of timestamps: cheap at hundreds per second.
        strategy="sliding-window-counter",
        # No X-RateLimit-* headers on every answer: each would cost a second Redis round trip.
        # A refused request gets Retry-After from _too_many.
        headers_enabled=False,
        on_breach=_too_many,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
        key_prefix="oneiro-rate",
    )
    return limiter
