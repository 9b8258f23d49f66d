"""Where a queued job stands: its place in dispatch order, and when it may start.

Both are estimates, and say so (docs/guide/jobs.md). The position is exact for the
moment it is read, but the order changes as other tenants submit (a job of a tenant with less
running goes ahead of it) and as jobs end, are canceled or expire. The start time assumes every
announced worker slot renders at the farm's measured mean speed, one job after another, with no
new job ahead of this one; it is null while there is no measured speed or no worker.

A backlog job's standing is counted, not read: the fair order is arithmetic on each tenant's
load, weight and place in its own order (shared/dispatch.py), so the jobs ahead of one are each
tenant's first few in its own order, counted and their stored work summed from an index; no
backlog is sorted and no job's params are read, so a GET of a queued job behind 10,000 others
stays cheap (benchmarks/dispatch.py).
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Uuid,
    bindparam,
    func,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from shared.dispatch import IN_BACKLOG, IN_FLIGHT, fair_order
from shared.estimates import done_fraction
from shared.models import Job, JobStatus, Tenant


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
    shares = tenant_shares(session) if backlog else {}
    for job_id in backlog:
        placed = backlog_ahead(session, job_id, shares)
        # None: the dispatcher sent it between these reads (each sees what is committed when it
        # runs); it stands last of the jobs in Redis.
        count, work = placed if placed is not None else (0, 0.0)
        ahead[job_id] = (len(sent) + count, before + work)
    return {
        job_id: {
            "position": jobs_ahead + 1,
            "estimated_start_seconds": None if capacity is None else round(work / capacity, 1),
        }
        for job_id, (jobs_ahead, work) in ahead.items()
    }


@dataclass(frozen=True)
class Share:
    """A tenant's part in the fair order: its backlog jobs, its jobs in flight, its weight."""

    backlog: int
    load: int
    weight: float

    def share(self, nth: int) -> float:
        """The fair order's share of the tenant's nth backlog job, as the database computes
        it (shared/dispatch.py ranked_backlog): an int over a float, one IEEE division."""
        return (self.load + nth - 1) / self.weight

    def below(self, share: float) -> int:
        """How many of the tenant's backlog jobs have a share below `share`."""
        k = min(self.backlog, max(0, math.ceil(share * self.weight - self.load + 1) - 1))
        while k > 0 and self.share(k) >= share:  # the estimate's rounding, put right
            k -= 1
        while k < self.backlog and self.share(k + 1) < share:
            k += 1
        return k


def tenant_shares(session: Session) -> dict[uuid.UUID | None, Share]:
    """Each tenant with a backlog: its backlog's size (from ix_jobs_backlog), its jobs in
    flight and its weight, as the fair order weighs them (jobs of no tenant: no load, 1)."""
    flying = Counter(
        dict(
            session.execute(
                select(Job.tenant_id, func.count())
                .where(IN_FLIGHT, Job.tenant_id.is_not(None))
                .group_by(Job.tenant_id)
            ).all()
        )
    )
    rows = session.execute(
        select(Job.tenant_id, func.count(), Tenant.weight)
        .outerjoin(Tenant, Tenant.id == Job.tenant_id)
        .where(IN_BACKLOG)
        .group_by(Job.tenant_id, Tenant.weight)
    )
    return {
        tenant: Share(count, flying[tenant], weight if weight is not None else 1.0)
        for tenant, count, weight in rows
    }


def _of(tenant: uuid.UUID | None) -> ColumnElement[bool]:
    return Job.tenant_id.is_(None) if tenant is None else Job.tenant_id == tenant


OWN_ORDER = (Job.priority, Job.created_at, Job.id)


def backlog_ahead(
    session: Session, job_id: uuid.UUID, shares: dict[uuid.UUID | None, Share]
) -> tuple[int, float] | None:
    """The backlog jobs before `job_id` (a backlog job) in fair order, and their work; None
    when its tenant has no backlog in `shares` (read before the job was sent).

    Without sorting the backlog: the job's share is its tenant's load with its place in its
    tenant's own order (one indexed count); every other tenant has ahead of it its jobs of a
    lower share, which is a count of its first jobs in its own order, plus at an equal share
    the next one if older (the fair order's tie); their work is summed from the first jobs of
    each tenant read in ix_jobs_backlog's order."""
    me = session.execute(select(*OWN_ORDER, Job.tenant_id).where(Job.id == job_id)).one()
    mine = tuple_(*OWN_ORDER) < tuple_(me.priority, me.created_at, me.id)
    nth = 1 + (session.scalar(select(func.count()).where(IN_BACKLOG, _of(me.tenant_id), mine)) or 0)
    if me.tenant_id not in shares:
        return None
    share = shares[me.tenant_id].share(nth)
    firsts = {me.tenant_id: nth - 1}
    tied = []
    for tenant, theirs in shares.items():
        if tenant != me.tenant_id:
            firsts[tenant] = theirs.below(share)
            if firsts[tenant] < theirs.backlog and theirs.share(firsts[tenant] + 1) == share:
                tied.append(tenant)
    if tied:  # equal shares: the older job first (fair_key)
        nexts = union_all(
            *(
                select(Job.tenant_id, Job.created_at, Job.id)
                .where(IN_BACKLOG, _of(tenant))
                .order_by(*OWN_ORDER)
                .offset(firsts[tenant])
                .limit(1)
                .subquery()
                .select()
                for tenant in tied
            )
        )
        for tenant, created_at, other in session.execute(nexts):
            if (created_at, other) < (me.created_at, me.id):
                firsts[tenant] += 1
    counted = [(tenant, count) for tenant, count in firsts.items() if count > 0]
    if not counted:
        return 0, 0.0
    return sum(count for _, count in counted), _first_jobs_work(session, counted)


def _first_jobs_work(session: Session, counted: list[tuple[uuid.UUID | None, int]]) -> float:
    """The work of each tenant's first `count` backlog jobs in its own order, summed: one
    query of a branch per tenant, each a short read of ix_jobs_backlog. Written as text: the
    same statement built of SQLAlchemy constructs cost more to build, behind 50 tenants, than
    the database took to answer it."""
    branches, binds = [], []
    for n, (tenant, count) in enumerate(counted):
        who = "tenant_id IS NULL" if tenant is None else f"tenant_id = :t{n}"
        branches.append(
            f"SELECT COALESCE(SUM(work), 0) AS w FROM (SELECT work FROM jobs WHERE {BACKLOG} "
            f"AND {who} ORDER BY priority, created_at, id LIMIT :k{n}) AS b{n}"
        )
        binds.append(bindparam(f"k{n}", count, type_=Integer))
        if tenant is not None:
            binds.append(bindparam(f"t{n}", tenant, type_=Uuid))
    query = text(" UNION ALL ".join(branches)).bindparams(*binds)
    return float(sum(session.scalars(query)))


# The backlog's condition (shared/dispatch.py IN_BACKLOG), as ix_jobs_backlog's WHERE has it.
BACKLOG = "status = 'queued' AND enqueued_at IS NULL"


def _running_work_left(session: Session) -> float:
    """The megapixel-steps the running renders have still to do: each one's stored work
    (every frame counted) by what its progress has left."""
    rows = session.execute(select(Job.work, Job.progress).where(Job.status == JobStatus.RUNNING))
    return float(sum(work * (1.0 - done_fraction(progress)) for work, progress in rows))
