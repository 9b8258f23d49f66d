"""What waits in a test's Redis queues, and removing them."""

from __future__ import annotations

import base64
import json

import redis

from shared.queue import webhook_queue
from shared.settings import Settings


def queued_job_ids(settings: Settings, queue: str | None = None) -> list[str]:
    """The job ids in the Celery messages waiting on this test's queue (or `queue`)."""
    client = redis.Redis.from_url(settings.redis_url)
    messages = client.lrange(queue or settings.queue, 0, -1)
    client.close()
    return [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]


def drop_queues(redis_url: str, *queues: str) -> None:
    """Delete `queues` and the lists Celery keeps beside each for its priorities."""
    with redis.Redis.from_url(redis_url) as client:
        client.delete(*queues, *(f"{queue}\x06\x16{p}" for queue in queues for p in (3, 6, 9)))


def webhook_statuses(settings: Settings) -> list[tuple[str, str | None]]:
    """(status, error) of the job in each webhook event waiting to be delivered."""
    with redis.Redis.from_url(settings.redis_url) as client:
        messages = client.lrange(webhook_queue(settings), 0, -1)
        client.delete(webhook_queue(settings))
    bodies = [
        json.loads(json.loads(base64.b64decode(json.loads(m)["body"]))[0][2]) for m in messages
    ]
    return [(body["job"]["status"], body["job"]["error"]) for body in reversed(bodies)]
