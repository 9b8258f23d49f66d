"""Tenants and their API keys: made and revoked by `oneiro keys`, checked on every /v1 call.

A key is shown once, when it is made; the database keeps only its SHA-256. Keys are 256 random
bits, so a plain hash is enough (a slow password hash guards guessable secrets, not these).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db import changed_rows
from shared.models import ApiKey, Tenant, utcnow

KEY_PREFIX = "oneiro_"
# What is stored of a key in clear, to tell keys apart: the prefix and six random characters.
SHOWN_PREFIX_LENGTH = len(KEY_PREFIX) + 6


class TenantError(ValueError):
    """A keys command that cannot be done as asked; the message says why."""


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: the secret itself is only ever here."""

    tenant: str
    key: str
    prefix: str
    # Set when the tenant was made by this call: its webhook signing secret, shown once.
    webhook_secret: str | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> NewKey:
    """A new key for the tenant `tenant_name`, making the tenant when it does not exist."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    new_secret = None
    if tenant is None:
        if not 1 <= len(tenant_name) <= 100:
            raise TenantError("a tenant name is 1 to 100 characters")
        new_secret = secrets.token_hex(32)
        tenant = Tenant(name=tenant_name, webhook_secret=new_secret)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = key[:SHOWN_PREFIX_LENGTH]
    session.add(ApiKey(tenant_id=tenant.id, prefix=prefix, key_hash=hash_key(key)))
    session.commit()
    return NewKey(tenant=tenant.name, key=key, prefix=prefix, webhook_secret=new_secret)


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke the key given whole, or every live key with that prefix; return how many."""
    match = (
        ApiKey.key_hash == hash_key(key_or_prefix)
        if len(key_or_prefix) > SHOWN_PREFIX_LENGTH
        else ApiKey.prefix == key_or_prefix
    )
    revoked = changed_rows(
        session.execute(
            update(ApiKey)
            .where(match, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return revoked


def authenticate(session: Session, key: str) -> Tenant | None:
    """The tenant of a live key, or None."""
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
    )


def set_weight(session: Session, tenant_name: str, weight: float) -> None:
    """Set the tenant's share of the farm (shared/dispatch.py weighs its running jobs by it)."""
    if not 0 < weight <= 1000:
        raise TenantError("a weight is a number above 0, at most 1000")
    changed = changed_rows(
        session.execute(update(Tenant).where(Tenant.name == tenant_name).values(weight=weight))
    )
    if not changed:
        raise TenantError(f"there is no tenant {tenant_name!r}")
    session.commit()
