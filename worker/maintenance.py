"""Periodic repairs that keep the database the truth: put back the jobs of dead workers, and
the dispatched jobs whose message never reached (or no longer is in) Redis; delete the files of
old jobs and of uploads left unused."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime, timedelta

import redis
from celery import Celery
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from shared.db import changed_rows
from shared.models import (
    IDEMPOTENCY_WINDOW,
    TERMINAL,
    IdempotencyKey,
    Job,
    JobStatus,
    Upload,
    utcnow,
)
from shared.queue import waiting_render_jobs
from shared.settings import Settings
from shared.storage import (
    Storage,
    StorageError,
    job_prefix,
    legacy_keys,
    upload_of,
    upload_prefix,
)
from shared.transitions import unmark_dispatched
from shared.uploads import expired_uploads, upload_store

log = logging.getLogger(__name__)


def maintenance_lock(settings: Settings) -> redis.lock.Lock:
    """The lock one maintenance run holds, so that a second beat (a second `make run`, two
    maintenance workers) makes a second run a no-op instead of a race.

    It expires on its own, so a run killed while holding it stops no later run for long."""
    client = redis.Redis.from_url(settings.redis_url)
    return client.lock(
        f"oneiro:{settings.queue}:maintain",
        timeout=max(60.0, 2 * settings.maintenance_interval),
        blocking=False,
    )


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
    requeued: list[uuid.UUID] = []
    failed: list[uuid.UUID] = []
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
        if changed_rows(changed) == 1:
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
    """Put back in the backlog every dispatched job sent longer ago than relay_after whose
    message is not waiting in Redis (lost, flushed, or never sent: a crash between the
    dispatcher's commit and its send); the dispatcher sends it again in its fair turn.

    A job that merely waits for a worker keeps its one message: putting it back on every
    round would send it twice. Jobs in the backlog (never dispatched) are the dispatcher's.
    """
    now = now or utcnow()
    due = (
        select(Job.id)
        .where(
            Job.status == JobStatus.QUEUED,
            Job.enqueued_at < now - timedelta(seconds=settings.relay_after),
        )
        .order_by(Job.created_at)
    )
    if session.scalar(due.limit(1)) is None:
        return []  # nothing to check, so no read of the queue
    # The queue is read before the rows are: a message in this read keeps its job from being
    # put back even if a worker takes it a moment later. Read after the rows, a message taken
    # in between (its job not yet claimed) would look lost and be sent twice.
    waiting = waiting_render_jobs(settings)
    due_ids = [job_id for job_id in session.scalars(due) if job_id not in waiting]
    if due_ids:
        unmark_dispatched(session, due_ids)
        session.commit()
        log.info("put %d dispatched job(s) Redis lost back in the backlog", len(due_ids))
    return due_ids


# Retention works through old jobs a batch at a time, so one maintenance run stays short.
EXPIRE_BATCH = 500


def expire_old_files(
    session: Session, storage: Storage, settings: Settings, now: datetime | None = None
) -> list[uuid.UUID]:
    """Delete every file of jobs that ended longer ago than retention_seconds: the job's folder
    (whatever any attempt wrote there, recorded or not) and the keys the row and the older
    naming give; the row stays, with expired_at set. Returns the jobs expired."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=settings.retention_seconds)
    old = session.execute(
        select(Job.id, Job.input_key, Job.result_key, Job.checkpoint_key)
        .where(
            Job.status.in_(sorted(TERMINAL)),
            Job.finished_at < cutoff,
            Job.expired_at.is_(None),
        )
        .order_by(Job.finished_at)
        .limit(EXPIRE_BATCH)
    ).all()
    expired = []
    for job_id, input_key, result_key, checkpoint in old:
        try:
            storage.delete_prefix(job_prefix(job_id))
            for key in {input_key, result_key, checkpoint, *legacy_keys(job_id)}:
                if key and not key.startswith(job_prefix(job_id)):
                    storage.delete(key)
            upload = upload_of(input_key)
            if upload is not None:  # its input was an upload: all of its folder
                storage.delete_prefix(upload_prefix(upload))
        except StorageError:
            # Not marked: the next run tries this job again, and one job's trouble does not
            # hold up the others'.
            log.warning("retention: the files of job %s stay for now", job_id, exc_info=True)
            continue
        # Files first, then the mark: a crash in between leaves the job to be expired again.
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.expired_at.is_(None))
            .values(expired_at=now, result_key=None)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        if changed_rows(changed) == 1:
            expired.append(job_id)
    session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.created_at < now - IDEMPOTENCY_WINDOW)
    )
    session.commit()
    if expired:
        log.info("retention: deleted the files of %d job(s)", len(expired))
    return expired


def expire_uploads(
    session: Session, storage: Storage, settings: Settings, now: datetime | None = None
) -> list[uuid.UUID]:
    """Delete the uploads no job took that went unused for upload_ttl: the row first (a
    conditional DELETE, so a job taking it at that moment keeps it), then its bytes (an S3
    multipart upload aborted). Returns the uploads deleted."""
    now = now or utcnow()
    store = upload_store(storage, settings.upload_part_bytes)
    deleted = []
    for upload in expired_uploads(session, now, EXPIRE_BATCH):
        session.expunge(upload)  # read as it is: its row is deleted next
        gone = changed_rows(
            session.execute(
                delete(Upload)
                .where(Upload.id == upload.id, Upload.job_id.is_(None), Upload.expires_at <= now)
                .execution_options(synchronize_session=False)
            )
        )
        session.commit()
        if not gone:
            continue
        try:
            store.discard(upload)
        except StorageError:
            # The row is gone, so nothing names these bytes; the log does.
            log.warning("uploads: the bytes of upload %s stay", upload.id, exc_info=True)
        deleted.append(upload.id)
    if deleted:
        log.info("uploads: deleted %d expired upload(s)", len(deleted))
    return deleted


class TemporarySweeper:
    """Deletes the temporary files of writes a killed process never finished, once older than
    temp_file_max_age. At most once per that age in a process: the sweep walks the whole storage
    folder, too much for every maintenance run, and a leftover waits at most twice the age."""

    def __init__(self) -> None:
        self.last = float("-inf")

    def __call__(self, storage: Storage, settings: Settings) -> list[str]:
        """Sweep if this process has not within temp_file_max_age; return what was deleted."""
        if time.monotonic() - self.last < settings.temp_file_max_age:
            return []
        self.last = time.monotonic()
        swept = storage.sweep_temporary(settings.temp_file_max_age)
        if swept:
            log.warning("storage: deleted %d temporary file(s) of interrupted writes", len(swept))
        return swept
