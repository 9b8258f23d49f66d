"""What keeps webhook deliveries fair between tenants and a dead receiver quiet, shared by every
webhooks worker through Redis.

- Each tenant has at most `webhook_tenant_deliveries` deliveries in flight at once, over all
  webhooks workers: one tenant's slow receiver holds that many threads, and another tenant's
  events find the rest free (measured before: 40 jobs to a receiver holding each request 30 s
  took every thread, and another tenant's events waited 16 s). A delivery over the share waits
  a moment and is tried again, without counting as a failed attempt.
- A target whose event was given up is remembered as down for TARGET_DOWN_S: that one give-up is
  logged as an error, and while it is down its other events' failed attempts and give-ups are
  logged at debug level (one line, not one per event), until a delivery to it works again.

Both fail open: were Redis away a moment, deliveries go on unlimited and loud, never stop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

# How long a given-up target stays down unless a delivery to it works: the longest back-off
# (shared/webhooks.py backoff), so a target that stays dead is reported again once an hour.
TARGET_DOWN_S = 3600
# A slot outlives its delivery's deadline by this much, then frees itself: a thread killed
# mid-delivery (its worker SIGKILLed) cannot hold its tenant's slot for ever.
SLOT_GRACE_S = 5.0
REDIS_TIMEOUT_S = 2.0

# One atomic step, so two workers cannot both take a tenant's last slot: drop the slots whose
# time is up (by Redis's clock, the same for every host), then take one if the tenant has fewer
# than its share. KEYS[1]: the tenant's sorted set; ARGV: share, seconds a slot lives, token.
# No client library offers a counting semaphore with expiry; redis-py runs the script by SHA.
_TAKE_SLOT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], t + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2])) + 1)
return 1
"""


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def _slots_key(settings: Settings, tenant_id: uuid.UUID | None) -> str:
    return f"oneiro:{settings.queue}:webhook-slots:{tenant_id or 'none'}"


def _down_key(settings: Settings, url: str) -> str:
    # Hashed: a URL may carry credentials, which have no business in Redis's keyspace.
    return f"oneiro:{settings.queue}:webhook-down:{hashlib.sha256(url.encode()).hexdigest()[:24]}"


@contextlib.contextmanager
def tenant_slot(settings: Settings, tenant_id: uuid.UUID | None) -> Iterator[bool]:
    """Takes one of the tenant's delivery slots for the block: yields True, or False when the
    tenant has its share in flight already (the caller defers the delivery)."""
    key = _slots_key(settings, tenant_id)
    token = uuid.uuid4().hex
    try:
        with _redis(settings) as client:
            lives = settings.webhook_timeout + SLOT_GRACE_S
            taken = client.register_script(_TAKE_SLOT)(
                keys=[key], args=[settings.webhook_tenant_deliveries, lives, token]
            )
    except redis.RedisError:
        log.warning("webhook slots unknown (Redis did not answer): delivering anyway")
        yield True
        return
    if not taken:
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(redis.RedisError), _redis(settings) as client:
            client.zrem(key, token)


def mark_down(settings: Settings, url: str) -> bool:
    """Remember that an event to `url` was given up; whether it was up until now (the give-up
    to report)."""
    try:
        with _redis(settings) as client:
            return bool(client.set(_down_key(settings, url), 1, nx=True, ex=TARGET_DOWN_S))
    except redis.RedisError:
        return True


def is_down(settings: Settings, url: str) -> bool:
    """Whether an event to `url` was given up lately, and none delivered since."""
    try:
        with _redis(settings) as client:
            return bool(client.exists(_down_key(settings, url)))
    except redis.RedisError:
        return False


def mark_up(settings: Settings, url: str) -> bool:
    """A delivery to `url` worked: whether it had been down (the recovery to report)."""
    try:
        with _redis(settings) as client:
            return bool(client.delete(_down_key(settings, url)))
    except redis.RedisError:
        return False
