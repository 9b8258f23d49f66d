"""Where a queued job stands: its place in dispatch order, and when it may start.

Both are estimates, and say so (docs/guide/jobs.md). The position is exact for the
moment it is read, but the order changes as other tenants submit (a job of a tenant with less
running goes ahead of it) and as jobs end, are canceled or expire. The start time assumes every
announced worker slot renders at the farm's measured mean speed, one job after another, with no
new job ahead of this one; it is null while there is no measured speed or no worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.cost import megapixel_steps
from shared.dispatch import fair_order
from shared.models import Job, JobStatus


def dispatch_order(session: Session) -> list[uuid.UUID]:
    """Every queued job's id in the order workers will get them: first the jobs already in
    Redis (in the order they were sent), then the backlog in fair order."""
    sent = session.scalars(
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None))
        .order_by(Job.enqueued_at, Job.id)
    )
    return [*sent, *session.scalars(fair_order())]


def queue_standings(
    session: Session, job_ids: Iterable[uuid.UUID], rate: float | None, slots: int
) -> dict[uuid.UUID, dict[str, Any]]:
    """{job id: {"position", "estimated_start_seconds"}} of each of `job_ids` that is queued;
    `rate` is a worker's measured megapixel-steps per second, `slots` the workers' slots."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    order = dispatch_order(session)
    positions = {job_id: n for n, job_id in enumerate(order, 1) if job_id in wanted}
    if not positions:
        return {}
    capacity = rate * slots if rate and slots > 0 else None
    starts: dict[uuid.UUID, float | None] = dict.fromkeys(positions)
    if capacity is not None:
        last = max(positions.values())
        work = _queued_work(session, order[:last])
        ahead = _running_work_left(session)
        for job_id in order[:last]:
            if job_id in positions:
                starts[job_id] = round(ahead / capacity, 1)
            ahead += work.get(job_id, 0.0)
    return {
        job_id: {"position": position, "estimated_start_seconds": starts[job_id]}
        for job_id, position in positions.items()
    }


# A job's work never changes (its params are fixed at submit), so each process remembers it:
# behind a backlog of 10,000 a standing read every queued row's params (JSON) and costed each,
# about 250 ms a GET of a queued job; now it reads the params of the jobs it has not seen.
_WORK_MEMO: dict[uuid.UUID, float] = {}
_WORK_MEMO_MAX = 200_000


def _queued_work(session: Session, job_ids: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """The megapixel-steps of each of `job_ids` (queued jobs)."""
    unseen = [job_id for job_id in job_ids if job_id not in _WORK_MEMO]
    if len(_WORK_MEMO) + len(unseen) > _WORK_MEMO_MAX:
        _WORK_MEMO.clear()  # ended jobs' figures pile up otherwise; a clear costs one reread
        unseen = job_ids
    for at in range(0, len(unseen), MEMO_BATCH):
        rows = session.execute(
            select(Job.id, Job.input_width, Job.input_height, Job.params, Job.frames).where(
                Job.id.in_(unseen[at : at + MEMO_BATCH])
            )
        )
        for job_id, width, height, params, frames in rows:
            _WORK_MEMO[job_id] = megapixel_steps(width, height, params, frames)
    return {job_id: _WORK_MEMO.get(job_id, 0.0) for job_id in job_ids}


# Ids per query when reading the params of jobs not yet costed (a bound on the IN list).
MEMO_BATCH = 1000


def _running_work_left(session: Session) -> float:
    """The megapixel-steps the running renders have still to do, by their progress."""
    rows = session.execute(
        select(Job.input_width, Job.input_height, Job.params, Job.progress).where(
            Job.status == JobStatus.RUNNING
        )
    )
    return sum(
        megapixel_steps(width, height, params) * (1.0 - float((progress or {}).get("fraction", 0)))
        for width, height, params, progress in rows
    )
