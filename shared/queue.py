"""The hand-off between API and worker: one Celery configuration, one task name."""

from __future__ import annotations

import base64
import binascii
import json
import uuid

import redis
from celery import Celery
from kombu.transport.redis import PRIORITY_STEPS, Channel

from shared.settings import Settings

# The API sends by name, so it never imports the worker (or TensorFlow).
RENDER_TASK = "oneiro.render_job"
MAINTAIN_TASK = "oneiro.maintain"
WEBHOOK_TASK = "oneiro.deliver_webhook"

# With the Redis transport an unacknowledged message comes back after the visibility timeout;
# were it shorter than a render, a second worker would start the same job. It is kept longer
# than the hard time limit, by this margin.
VISIBILITY_MARGIN_S = 3600


def create_celery(settings: Settings) -> Celery:
    """A Celery app with the settings every Oneiro process shares."""
    app = Celery("oneiro", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_default_queue=settings.queue,
        # The job row is the record of a job (DESIGN.md invariant 1); Celery keeps no results.
        task_ignore_result=True,
        result_backend=None,
        # Acknowledge after the render: a worker that dies mid-render leaves the message to be
        # delivered again instead of losing the job.
        task_acks_late=True,
        # A child killed by the OS (out of memory, segfault) also gives its message back.
        task_reject_on_worker_lost=True,
        # One job at a time per process: a prefetched job would wait behind an hour-long render
        # while another GPU sits idle.
        worker_prefetch_multiplier=1,
        # A render that outgrows every reasonable size stops instead of holding a GPU forever.
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.hard_time_limit,
        broker_transport_options={
            "visibility_timeout": settings.hard_time_limit + VISIBILITY_MARGIN_S,
            # A Redis that stops answering must fail a publish, not hang the request.
            "socket_timeout": settings.enqueue_timeout,
            "socket_connect_timeout": settings.enqueue_timeout,
        },
        broker_connection_timeout=settings.enqueue_timeout,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        # Maintenance goes to a queue of its own: a GPU worker busy for an hour must not hold
        # up the reaper that would rescue a dead one's job.
        # Webhook deliveries wait on other people's servers; a queue of their own keeps them
        # from holding up either.
        task_routes={
            MAINTAIN_TASK: {"queue": maintenance_queue(settings)},
            WEBHOOK_TASK: {"queue": webhook_queue(settings)},
        },
        beat_schedule={
            "maintain": {"task": MAINTAIN_TASK, "schedule": settings.maintenance_interval}
        },
    )
    return app


def maintenance_queue(settings: Settings) -> str:
    """The queue of the light worker that runs the reaper and the relay."""
    return f"{settings.queue}-maintenance"


def webhook_queue(settings: Settings) -> str:
    """The queue of webhook deliveries, served by the maintenance worker."""
    return f"{settings.queue}-webhooks"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of a Celery queue: kombu keeps one per priority step, the queue's name
    for the default priority and name + separator + step for the others."""
    return [queue, *(f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step)]


# The waiting messages are read this many at a time, so a long backlog is never one huge reply.
READ_BATCH = 1000


def waiting_render_jobs(settings: Settings) -> set[uuid.UUID]:
    """The job ids of the render messages waiting in Redis, not yet delivered to a worker."""
    waiting: set[uuid.UUID] = set()
    with redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.enqueue_timeout,
        socket_connect_timeout=settings.enqueue_timeout,
    ) as client:
        for key in queue_keys(settings.queue):
            # Kombu pushes at the head and workers pop at the tail: reading from the head in
            # batches, a message pushed meanwhile may be read twice, none already there missed.
            start = 0
            while batch := client.lrange(key, start, start + READ_BATCH - 1):
                waiting.update(filter(None, map(_render_job_id, batch)))
                start += READ_BATCH
    return waiting


def _render_job_id(message: bytes) -> uuid.UUID | None:
    """The job id of a kombu message on the Redis transport, if it is a render message."""
    try:
        envelope = json.loads(message)
        if envelope["headers"]["task"] != RENDER_TASK:
            return None
        body = envelope["body"]
        if envelope["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return uuid.UUID(args[0])
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return None  # not a message this code sent; it says nothing about a job


def enqueue_render(celery: Celery, job_id: uuid.UUID) -> None:
    """Send the render message for `job_id`; raise if Redis does not take it."""
    celery.send_task(
        RENDER_TASK,
        args=[str(job_id)],
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5},
    )


def redis_answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis server answers PING at `url`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()
