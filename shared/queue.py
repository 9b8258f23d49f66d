"""The hand-off between API and worker: one Celery configuration, one task name."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.transport.redis import PRIORITY_STEPS, Channel

from shared.cost import GIB, peak_memory_bytes
from shared.models import Job
from shared.params import RenderParams
from shared.settings import Settings, parse_worker_classes

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
        # A worker started without --queues consumes its class's queue.
        task_default_queue=worker_queue(settings),
        # The job row is the record of a job (invariant 1, docs/internals/architecture.md);
        # Celery keeps no results.
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


@dataclass(frozen=True)
class WorkerClass:
    """Workers of one size: their name, the queue they consume, and the memory each holds
    (None: unknown, so anything goes, as with one class and no ONEIRO_WORKER_MEMORY_GB)."""

    name: str
    queue: str
    memory_bytes: int | None


def worker_classes(settings: Settings) -> list[WorkerClass]:
    """The farm's worker classes, smallest first (ONEIRO_WORKER_CLASSES); without any, one class
    of ONEIRO_WORKER_MEMORY_GB if set.

    The smallest class keeps the queue as it always was and each larger one gets
    `<queue>-<name>`: a farm that adds large workers leaves its present ones as they are."""
    classes = parse_worker_classes(settings.worker_classes)
    if not classes:
        memory = settings.worker_memory_gb
        return [WorkerClass("", settings.queue, None if memory is None else int(memory * GIB))]
    (first, first_gib), *larger = classes
    return [
        WorkerClass(first, settings.queue, int(first_gib * GIB)),
        *(WorkerClass(name, f"{settings.queue}-{name}", int(gib * GIB)) for name, gib in larger),
    ]


def this_worker_class(settings: Settings) -> WorkerClass:
    """The class of this worker: the one ONEIRO_WORKER_CLASS names, else the smallest."""
    classes = worker_classes(settings)
    return next((c for c in classes if c.name == settings.worker_class), classes[0])


def class_holding(settings: Settings, memory_bytes: int) -> WorkerClass | None:
    """The smallest worker class whose workers hold `memory_bytes`, or None when none does."""
    for worker_class in worker_classes(settings):
        if worker_class.memory_bytes is None or worker_class.memory_bytes >= memory_bytes:
            return worker_class
    return None


def job_memory(job: Job) -> int:
    """A stored job's peak memory (shared/cost.py peak_memory_bytes), from its stored params."""
    # Stored params were valid when submitted; not validated again (as megapixel_steps).
    params = RenderParams.model_construct(**job.params)
    return peak_memory_bytes(job.input_width, job.input_height, params)


def render_queue(settings: Settings, job: Job) -> str:
    """The queue a job's render message goes to: that of the smallest worker class that holds
    it. Every send goes through here (submit, retry, the relay). A job no class holds (accepted
    before the farm shrank) goes to the largest, where its worker says why it cannot run it."""
    classes = worker_classes(settings)
    if len(classes) == 1:
        return classes[0].queue  # a farm of one class: no memory to weigh
    chosen = class_holding(settings, job_memory(job))
    return (chosen or classes[-1]).queue


def render_queues(settings: Settings) -> list[str]:
    """Every render queue of the farm, smallest class first."""
    return [worker_class.queue for worker_class in worker_classes(settings)]


def worker_memory(settings: Settings) -> int | None:
    """The memory this worker holds: ONEIRO_WORKER_MEMORY_GB, else its class's (None: unknown)."""
    if settings.worker_memory_gb is not None:
        return int(settings.worker_memory_gb * GIB)
    return this_worker_class(settings).memory_bytes


def worker_queue(settings: Settings) -> str:
    """The render queue this worker consumes: its class's."""
    return this_worker_class(settings).queue


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
        for key in (key for queue in render_queues(settings) for key in queue_keys(queue)):
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


def enqueue_render(celery: Celery, job_id: uuid.UUID, queue: str | None = None) -> None:
    """Send the render message for `job_id` to `queue` (render_queue; None: the default
    queue); raise if Redis does not take it."""
    celery.send_task(
        RENDER_TASK,
        args=[str(job_id)],
        queue=queue,
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
