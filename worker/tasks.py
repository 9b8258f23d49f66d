"""Celery tasks: thin wrappers that hand a job id to the job runner."""

from __future__ import annotations

import contextlib
import logging
import random
import uuid

import redis
from celery import Task

from shared.delivery_limits import is_down, mark_down
from shared.dispatch import safely_dispatch
from shared.queue import MAINTAIN_TASK, RENDER_TASK, WEBHOOK_TASK
from shared.webhooks import DeliveryDeferred, DeliveryFailed, backoff, deliver, send_event
from worker.celery_app import app
from worker.jobs import run_job
from worker.maintenance import (
    TemporarySweeper,
    expire_old_files,
    expire_uploads,
    maintenance_lock,
    reap_stale_jobs,
    relay_queued_jobs,
)
from worker.runtime import get_runtime

log = logging.getLogger(__name__)

# A deferred delivery (its tenant's share in flight) is tried again after 1-2 of these seconds.
DEFER_S = 1.0

# One per process: it remembers when this process last swept.
sweep_temporary_files = TemporarySweeper()


@app.task(name=RENDER_TASK)
def render_job(job_id: str) -> None:
    """Render the job `job_id`; a redelivered message for a claimed or finished job does nothing."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a render message with a malformed job id %r", job_id)
        return
    runtime = get_runtime()
    try:
        run_job(parsed, runtime)
    finally:
        # This slot is free again (or was never taken: a lost claim): the next job in fair
        # order goes to Redis now, not at the next maintenance run.
        with runtime.sessions() as session:
            safely_dispatch(session, runtime.celery(), runtime.settings)


@app.task(name=MAINTAIN_TASK, ignore_result=True)
def maintain() -> None:
    """Put back the jobs of dead workers and the dispatched jobs Redis lost, dispatch, delete
    the files of old jobs and of interrupted writes."""
    runtime = get_runtime()
    lock = maintenance_lock(runtime.settings)
    if not lock.acquire():
        log.info("maintenance is running elsewhere (another beat); skipping this round")
        return
    try:
        with runtime.sessions() as session:
            _, failed = reap_stale_jobs(session, runtime.settings)
            for job_id in failed:
                send_event(app, session, job_id, "completed")
            relay_queued_jobs(session, app, runtime.settings)
            # The safety net: expires what passed its start_by, and fills the slots no
            # submit or finish dispatched to (a dispatcher that died, Redis away meanwhile).
            # The runtime's Celery: its settings name the render queue to send to.
            safely_dispatch(session, runtime.celery(), runtime.settings)
            expire_old_files(session, runtime.storage, runtime.settings)
            expire_uploads(session, runtime.storage, runtime.settings)
        sweep_temporary_files(runtime.storage, runtime.settings)
    finally:
        with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile
            lock.release()


@app.task(name=WEBHOOK_TASK, bind=True, ignore_result=True)
def deliver_webhook(self: Task, job_id: str, event_id: str, body: str, failures: int = 0) -> None:
    """POST one event to the job's webhook; retried with back-off while the target fails
    (`failures`: the attempts that failed so far; a deferral is none), deferred a moment while
    the tenant has its share of deliveries in flight."""
    runtime = get_runtime()
    settings = runtime.settings
    try:
        deliver(runtime.sessions, settings, job_id, event_id, body)
    except DeliveryDeferred:
        # Back in the queue behind other tenants' events; jittered, so the deferred events of
        # one tenant do not all come back at one moment.
        countdown = DEFER_S * (1 + random.random())
        raise self.retry(countdown=countdown, max_retries=None) from None
    except DeliveryFailed as exc:
        failures += 1
        if failures >= settings.webhook_max_attempts:
            if mark_down(settings, exc.url):  # its first give-up: the one line an operator reads
                log.error(
                    "job %s: webhook %s given up after %d attempts: %s; until a delivery to "
                    "this target works, its other events' failures are logged at debug level",
                    job_id,
                    event_id,
                    failures,
                    exc,
                )
            else:
                log.debug("job %s: webhook %s given up (target down): %s", job_id, event_id, exc)
            return
        delay = backoff(settings, failures - 1)
        level = logging.DEBUG if is_down(settings, exc.url) else logging.WARNING
        log.log(
            level,
            "job %s: webhook %s attempt %d failed (%s); again in %gs",
            job_id,
            event_id,
            failures,
            exc,
            delay,
        )
        raise self.retry(countdown=delay, max_retries=None, kwargs={"failures": failures}) from None
