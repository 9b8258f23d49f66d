"""Every change of a job's state, for the API and the worker alike.

Each function is one state change in the caller's session: the insert of a new job, or one
conditional UPDATE whose row count says whether it happened (a cancel racing a finish, two
workers claiming one job: one wins, the other changes nothing). The caller owns the session and
commits (the worker in a short `sessions.begin()` block per change, the API once per request),
then publishes the change (shared/changes.py); only send_job commits itself, because
it comes after a commit (invariant 2 of docs/internals/architecture.md: commit, then enqueue).
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from celery import Celery
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db import changed_rows
from shared.models import IdempotencyKey, Job, JobStatus, Upload, shown_progress, utcnow
from shared.params import PRIORITIES
from shared.queue import enqueue_render

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
# Which jobs each client action applies to.
CANCELABLE = (JobStatus.QUEUED, JobStatus.RUNNING)
RETRYABLE = (JobStatus.FAILED, JobStatus.CANCELED, JobStatus.EXPIRED)


class LostJob(Exception):
    """The job is no longer this worker's to write (canceled, or handed to another attempt)."""


# The API's changes.


def count_active(session: Session, tenant_id: uuid.UUID) -> int:
    """The tenant's jobs queued or running."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE))
        )
        or 0
    )


def add_job(session: Session, job: Job, idempotency: tuple[str, str] | None = None) -> None:
    """Add a new queued job to the backlog (the dispatcher sends it, shared/dispatch.py), and
    the Idempotency-Key that names it (key, request hash) if any. IntegrityError on commit when
    that key was taken meanwhile."""
    job.status = JobStatus.QUEUED
    job.enqueued_at = None
    # Copies of params the dispatcher sorts and filters on in SQL.
    job.priority = PRIORITIES[job.params.get("priority") or "normal"]
    start_by = job.params.get("start_by")
    job.start_by = datetime.fromisoformat(start_by) if start_by else None
    session.add(job)
    if idempotency is not None:
        session.flush()  # the job row first: the key refers to it
        key, request_hash = idempotency
        session.add(
            IdempotencyKey(
                tenant_id=job.tenant_id, key=key, request_hash=request_hash, job_id=job.id
            )
        )


def take_upload(session: Session, upload_id: uuid.UUID, job_id: uuid.UUID) -> bool:
    """Make a complete, live upload no job has yet the input of `job_id` (flushed already),
    in the caller's transaction; False when it is not such an upload any more (another job
    took it, or it expired: maintenance deletes only what no job took)."""
    return bool(
        changed_rows(
            session.execute(
                update(Upload)
                .where(
                    Upload.id == upload_id,
                    Upload.job_id.is_(None),
                    Upload.completed_at.is_not(None),
                    Upload.expires_at > utcnow(),
                )
                .values(job_id=job_id)
                .execution_options(synchronize_session=False)
            )
        )
    )


def cancel(session: Session, job_id: uuid.UUID) -> bool:
    """Cancel a queued or running job (a running render stops at its next tile batch); False
    when the job is in another status."""
    return _change(session, job_id, CANCELABLE, status=JobStatus.CANCELED, finished_at=utcnow())


def retry(session: Session, job_id: uuid.UUID) -> bool:
    """Queue a failed, canceled or expired job again, as a new attempt of the same job, in the
    backlog; False when the job is in another status. A retry is asked for now: the job's
    start_by, which has passed or may have, no longer holds."""
    return _change(
        session,
        job_id,
        RETRYABLE,
        status=JobStatus.QUEUED,
        error=None,
        progress={},
        result_key=None,
        started_at=None,
        finished_at=None,
        worker=None,
        enqueued_at=None,
        start_by=None,
    )


def _change(
    session: Session, job_id: uuid.UUID, allowed: tuple[JobStatus, ...], **values: Any
) -> bool:
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(allowed))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return changed_rows(changed) == 1


def mark_dispatched(session: Session, job_id: uuid.UUID, now: datetime) -> bool:
    """Mark a backlog job as handed to Redis (the dispatcher commits, then sends)."""
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))
        .values(enqueued_at=now)
        .execution_options(synchronize_session=False)
    )
    return changed_rows(changed) == 1


def unmark_dispatched(session: Session, job_ids: list[uuid.UUID]) -> None:
    """Put queued jobs whose message Redis did not take (or lost) back in the backlog."""
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def expire(session: Session, job_id: uuid.UUID, start_by: datetime) -> bool:
    """End a queued job no worker started by its start_by; False if it left the queue."""
    return _change(
        session,
        job_id,
        (JobStatus.QUEUED,),
        status=JobStatus.EXPIRED,
        finished_at=utcnow(),
        error=f"not started by its start_by ({start_by.isoformat()}): no worker was free in "
        "time, so the job expired without running",
    )


def send_job(session: Session, celery: Celery, job_id: uuid.UUID, queue: str) -> None:
    """Send a committed job's render message to `queue` (its render_queue), then record when
    (the relay's way).

    A job whose sending is never recorded (Redis down, a crash between the two) is what the
    relay finds and sends again.
    """
    enqueue_render(celery, job_id, queue)
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


# The worker's changes. Every one after the claim is fenced on the attempt.


def claim_job(session: Session, job_id: uuid.UUID, worker: str) -> int | None:
    """Move a queued job to running; return the new attempt number, or None if another won."""
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if changed_rows(claimed) != 1:
        return None
    return session.get_one(Job, job_id, populate_existing=True).attempt


def update_running(session: Session, job_id: uuid.UUID, attempt: int, **values: Any) -> None:
    """Change a running job of this attempt; LostJob when it is no longer running as this
    attempt, so a worker that lost its claim cannot overwrite a newer attempt."""
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.attempt == attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if changed_rows(changed) != 1:
        raise LostJob(f"job {job_id} attempt {attempt} is no longer running here")


def beat(session: Session, job_id: uuid.UUID, attempt: int) -> None:
    """The attempt's worker is alive (the reaper puts back jobs whose beats stop)."""
    update_running(session, job_id, attempt, heartbeat_at=utcnow())


def write_progress(
    session: Session, job_id: uuid.UUID, attempt: int, progress: dict[str, Any]
) -> None:
    """Record how far the render is (a beat too)."""
    update_running(session, job_id, attempt, progress=progress, heartbeat_at=utcnow())


def record_checkpoint(session: Session, job_id: uuid.UUID, attempt: int, key: str) -> None:
    """Record the attempt's latest saved engine state, which a next attempt resumes from."""
    update_running(session, job_id, attempt, checkpoint_key=key)


def hand_back(session: Session, job_id: uuid.UUID, attempt: int) -> None:
    """Put the attempt's job back in the backlog because its worker is shutting down: queued
    again as the reaper puts back a dead worker's job (worker/maintenance.py), its checkpoint
    kept for the next attempt to resume from, at once rather than after the lease."""
    update_running(
        session, job_id, attempt, status=JobStatus.QUEUED, worker=None, enqueued_at=None, error=None
    )


def is_current(session: Session, job_id: uuid.UUID, attempt: int) -> bool:
    """Whether the job is still running as this attempt (not canceled, not taken away)."""
    row = session.execute(select(Job.status, Job.attempt).where(Job.id == job_id)).one_or_none()
    return row is not None and row.status == JobStatus.RUNNING and row.attempt == attempt


def succeed(
    session: Session,
    job_id: uuid.UUID,
    attempt: int,
    result_key: str,
    recipe: dict[str, Any] | None = None,
) -> None:
    """Record the attempt's result (and the recipe its file carries); its progress reads
    complete."""
    # The last report was throttled (step 8 of 10, say): the row says the render is complete.
    job = session.get_one(Job, job_id)
    progress = shown_progress(
        Job(status=JobStatus.SUCCEEDED, params=job.params, progress=job.progress)
    )
    _end(
        session,
        job_id,
        attempt,
        JobStatus.SUCCEEDED,
        result_key=result_key,
        recipe=recipe,
        progress=progress,
    )


def cancel_overrun(session: Session, job_id: uuid.UUID, attempt: int, limit: float) -> None:
    """Cancel the attempt that ran past its params.max_run_seconds, saying so."""
    _end(
        session,
        job_id,
        attempt,
        JobStatus.CANCELED,
        error=f"canceled: the render ran past its max_run_seconds ({limit:g} s)",
    )


def fail(session: Session, job_id: uuid.UUID, attempt: int, error: str) -> None:
    """Record why the attempt failed."""
    _end(session, job_id, attempt, JobStatus.FAILED, error=error)


def _end(
    session: Session, job_id: uuid.UUID, attempt: int, status: JobStatus, **values: Any
) -> None:
    update_running(
        session,
        job_id,
        attempt,
        status=status,
        finished_at=utcnow(),
        checkpoint_key=None,
        **values,
    )
