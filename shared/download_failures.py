"""Which ImageNet downloads a worker found failing lately, remembered in Redis so that the API
refuses at submit the jobs that need them (shared/weights.py takes the answer as `failures`).

Apart from shared/weights.py, which the engine imports: the engine imports no Redis.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import redis

from shared.catalogue import BACKBONES

if TYPE_CHECKING:
    from shared.settings import Settings

# How long a worker's failed download of ImageNet weights makes the API refuse jobs that need
# them: with downloads on and nothing cached the API cannot know the network is down, until a
# worker finds it. Long enough that a burst of jobs is refused with the fix, not failed one by
# one; short enough that a network back is used again soon (or restart with ONEIRO_WEIGHTS set).
DOWNLOAD_FAILURE_TTL_S = 600
# Redis must not hold up a submit: without an answer, no failure is known.
REDIS_TIMEOUT_S = 0.5


def _failure_key(settings: Settings, model: str) -> str:
    return f"{settings.queue}:weights-download-failed:{model}"


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
    )


def record_download_failure(settings: Settings, model: str, reason: str) -> None:
    """Remember, for DOWNLOAD_FAILURE_TTL_S, that a worker could not download `model`'s
    ImageNet weights (`reason`: what went wrong, in a few words). Never raises."""
    try:
        with _redis(settings) as client:
            client.set(_failure_key(settings, model), reason, ex=DOWNLOAD_FAILURE_TTL_S)
    except redis.RedisError:
        pass


def forget_download_failure(settings: Settings, model: str) -> None:
    """A download of `model`'s weights worked: forget the failure. Never raises."""
    try:
        with _redis(settings) as client:
            client.delete(_failure_key(settings, model))
    except redis.RedisError:
        pass


def download_failures(settings: Settings) -> dict[str, str]:
    """{backbone: reason} of the ImageNet downloads a worker found failing lately; empty where
    downloads are not what this deployment relies on, or Redis does not answer."""
    if settings.weights != "imagenet" or not settings.weights_download:
        return {}
    names = list(BACKBONES)
    try:
        with _redis(settings) as client:
            reasons = client.mget([_failure_key(settings, name) for name in names])
    except redis.RedisError:
        return {}
    return {name: reason.decode() for name, reason in zip(names, reasons, strict=True) if reason}
