"""Celery tasks: thin wrappers that hand a job id to the job runner."""

from __future__ import annotations

import contextlib
import logging
import uuid

import redis
from celery import Task

from shared.dispatch import safely_dispatch
from shared.queue import MAINTAIN_TASK, RENDER_TASK, WEBHOOK_TASK
from shared.webhooks import DeliveryFailed, backoff, deliver, send_event
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
def deliver_webhook(self: Task, job_id: str, event_id: str, body: str) -> None:
    """POST one webhook event; retried with back-off while the target fails."""
    runtime = get_runtime()
    try:
        deliver(runtime.sessions, runtime.settings, job_id, event_id, body)
    except DeliveryFailed as exc:
        attempts = self.request.retries + 1
        if attempts >= runtime.settings.webhook_max_attempts:
            log.error(
                "job %s: webhook %s given up after %d attempts: %s", job_id, event_id, attempts, exc
            )
            return
        delay = backoff(runtime.settings, self.request.retries)
        log.warning(
            "job %s: webhook %s attempt %d failed (%s); again in %gs",
            job_id,
            event_id,
            attempts,
            exc,
            delay,
        )
        raise self.retry(countdown=delay, max_retries=None) from None
