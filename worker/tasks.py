"""Celery tasks: thin wrappers that hand a job id to the job runner."""

from __future__ import annotations

import logging
import uuid

from shared.queue import MAINTAIN_TASK, RENDER_TASK
from worker.celery_app import app
from worker.jobs import run_job
from worker.maintenance import reap_stale_jobs, relay_queued_jobs
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name=RENDER_TASK)
def render_job(job_id: str) -> None:
    """Render the job `job_id`; a redelivered message for a claimed or finished job does nothing."""
    try:
        parsed = uuid.UUID(job_id)
    except ValueError:
        log.error("ignoring a render message with a malformed job id %r", job_id)
        return
    run_job(parsed, get_runtime())


@app.task(name=MAINTAIN_TASK, ignore_result=True)
def maintain() -> None:
    """Put back the jobs of dead workers, then send again the queued jobs Redis lost."""
    runtime = get_runtime()
    with runtime.sessions() as session:
        reap_stale_jobs(session, runtime.settings)
        relay_queued_jobs(session, app, runtime.settings)
