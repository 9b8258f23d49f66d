"""Celery tasks: thin wrappers that hand a job id to the job runner."""

from __future__ import annotations

import logging
import uuid

from shared.queue import RENDER_TASK
from worker.celery_app import app
from worker.jobs import run_job
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
