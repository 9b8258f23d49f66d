"""Where a queued job stands: its place in dispatch order, and when it may start.

Both are estimates, and say so (README: Where a job stands). The position is exact for the
moment it is read, but the order changes as other tenants submit (a job of a tenant with less
running goes ahead of it) and as jobs end, are canceled or expire. The start time assumes every
announced worker slot renders at the farm's measured mean speed, one job after another, with no
new job ahead of this one; it is null while there is no measured speed or no worker.

A backlog job's standing is one query: the backlog rows whose dispatch-order key (the
dispatcher's own, shared/dispatch.py fair_key) is below the job's, counted and their stored
work summed by the database; no job's params are read, so a GET of a queued job behind 10,000
others stays cheap (benchmarks/dispatch.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from shared.dispatch import fair_key, fair_order, ranked_backlog
from shared.estimates import done_fraction
from shared.models import Job, JobStatus


def dispatch_order(session: Session) -> list[uuid.UUID]:
    """Every queued job's id in the order workers will get them: first the jobs already in
    Redis (in the order they were sent), then the backlog in fair order."""
    return [*(job_id for job_id, _ in _sent(session)), *session.scalars(fair_order())]


def _sent(session: Session) -> list[tuple[uuid.UUID, float]]:
    """The jobs already in Redis, in the order they were sent, with their work: few (the free
    slots and the look-ahead), read from ix_jobs_status_enqueued."""
    return [
        (job_id, work)
        for job_id, work in session.execute(
            select(Job.id, Job.work)
            .where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None))
            .order_by(Job.enqueued_at, Job.id)
        )
    ]


def queue_standings(
    session: Session, job_ids: Iterable[uuid.UUID], rate: float | None, slots: int
) -> dict[uuid.UUID, dict[str, Any]]:
    """{job id: {"position", "estimated_start_seconds"}} of each of `job_ids` that is queued;
    `rate` is a worker's measured megapixel-steps per second, `slots` the workers' slots."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    sent = _sent(session)
    backlog = set(
        session.scalars(
            select(Job.id).where(
                Job.id.in_(wanted), Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None)
            )
        )
    )
    capacity = rate * slots if rate and slots > 0 else None
    before = _running_work_left(session) if capacity is not None else 0.0
    ahead: dict[uuid.UUID, tuple[int, float]] = {}
    for n, (job_id, work) in enumerate(sent):
        if job_id in wanted:
            ahead[job_id] = (n, before)
        before += work
    for job_id in backlog:
        count, work = backlog_ahead(session, job_id)
        ahead[job_id] = (len(sent) + count, before + work)
    return {
        job_id: {
            "position": jobs_ahead + 1,
            "estimated_start_seconds": None if capacity is None else round(work / capacity, 1),
        }
        for job_id, (jobs_ahead, work) in ahead.items()
    }


def backlog_ahead(session: Session, job_id: uuid.UUID) -> tuple[int, float]:
    """The backlog jobs before `job_id` (a backlog job) in fair order, and their work: one
    query, the rows whose fair_key is below the job's."""
    ranked = ranked_backlog().cte("ranked")
    me = select(*fair_key(ranked)).where(ranked.c.id == job_id).cte("me")
    count, work = session.execute(
        select(func.count(), func.coalesce(func.sum(ranked.c.work), 0.0))
        .select_from(ranked)
        .join(me, tuple_(*fair_key(ranked)) < tuple_(*me.c))
    ).one()
    return int(count), float(work)


def _running_work_left(session: Session) -> float:
    """The megapixel-steps the running renders have still to do: each one's stored work
    (every frame counted) by what its progress has left."""
    rows = session.execute(select(Job.work, Job.progress).where(Job.status == JobStatus.RUNNING))
    return sum(work * (1.0 - done_fraction(progress)) for work, progress in rows)
