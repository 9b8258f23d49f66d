"""Periodic repairs that keep the database the truth: put back the jobs of dead workers, and
send again the jobs whose message never reached (or no longer is in) Redis."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow
from shared.queue import send_job
from shared.settings import Settings

log = logging.getLogger(__name__)


def reap_stale_jobs(
    session: Session, settings: Settings, now: datetime | None = None
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Running jobs whose heartbeat is older than the lease: back to queued, or failed after
    max_attempts claims. Returns (requeued, failed). Each change is conditional on the attempt
    seen, so a worker that beats in the meantime keeps its job."""
    now = now or utcnow()
    deadline = now - timedelta(seconds=settings.lease_seconds)
    stale = session.execute(
        select(Job.id, Job.attempt, Job.worker).where(
            Job.status == JobStatus.RUNNING, Job.heartbeat_at < deadline
        )
    ).all()
    requeued, failed = [], []
    for job_id, attempt, worker in stale:
        silent = f"worker {worker} stopped answering (no heartbeat for {settings.lease_seconds:g}s)"
        if attempt >= settings.max_attempts:
            values = dict(
                status=JobStatus.FAILED,
                finished_at=now,
                error=f"{silent} on attempt {attempt} of {settings.max_attempts}; giving up",
            )
        else:
            values = dict(status=JobStatus.QUEUED, worker=None, enqueued_at=None, error=None)
        changed = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.RUNNING,
                Job.attempt == attempt,
                Job.heartbeat_at < deadline,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount == 1:
            (failed if attempt >= settings.max_attempts else requeued).append(job_id)
            log.warning(
                "job %s: %s; %s",
                job_id,
                silent,
                "failed" if attempt >= settings.max_attempts else "put back in the queue",
                # The reaper runs for no one job; the record names the one it is about.
                extra={"job_id": str(job_id), "attempt": attempt, "worker": worker},
            )
    session.commit()
    return requeued, failed


def relay_queued_jobs(
    session: Session, celery: Celery, settings: Settings, now: datetime | None = None
) -> list[uuid.UUID]:
    """Send again every queued job never enqueued, or enqueued longer ago than relay_after.

    A duplicate message is harmless: the claim lets only one through."""
    now = now or utcnow()
    due = session.scalars(
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            or_(
                Job.enqueued_at.is_(None),
                Job.enqueued_at < now - timedelta(seconds=settings.relay_after),
            ),
        )
        .order_by(Job.created_at)
    ).all()
    for job_id in due:
        send_job(session, celery, job_id)
    if due:
        log.info("relayed %d queued job(s) to Redis", len(due))
    return list(due)
