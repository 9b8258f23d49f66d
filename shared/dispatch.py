"""The dispatcher: which queued jobs Redis gets, and when (docs/operations/queue.md).

Redis delivers in arrival order and cannot be reordered, so it is handed only what the farm can
start now: as many jobs as there are free worker slots, plus `dispatch_lookahead`. The rest of
the backlog waits in the database (queued, `enqueued_at` None), where each dispatch chooses
again in fair order:

1. the tenant with the least work in flight (running or dispatched, divided by its `weight`)
   goes first; the n-th waiting job of a tenant counts as if its n - 1 before it were already
   running, so one query orders the whole backlog (weighted fair queuing);
2. within a tenant, higher `params.priority` first; then the oldest. Priority never orders
   tenants: between jobs of equal share the oldest goes first.

A tenant alone on the farm still takes every slot: the order only decides who goes first.

Free slots: every worker process that consumes the render queue announces itself in Redis
(`announce_slot`, refreshed with a TTL, so a dead worker's slot lapses); the jobs running and
those dispatched but not yet claimed are counted against them.

Commit, then enqueue, still: a job is marked dispatched and committed before its message is
sent; a send that fails clears the mark (the job waits in the backlog again); a crash between
the two leaves a dispatched job with no message, which the relay puts back after relay_after
(worker/maintenance.py). Dispatch runs after every submit, cancel and retry, after each render a
worker ends, when a worker announces its first slot, and in every maintenance run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from celery import Celery
from sqlalchemy import Select, and_, func, or_, select, true, union_all
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import Subquery

from shared import transitions
from shared.changes import publish_change
from shared.models import Job, JobStatus, Tenant, utcnow
from shared.queue import enqueue_render, render_queue, render_queues, worker_queue
from shared.settings import Settings
from shared.webhooks import send_event

log = logging.getLogger(__name__)

# A worker's announcement lasts this many of its heartbeat intervals: one missed refresh is
# forgiven, a dead worker's slot is gone within this many.
SLOT_TTL_BEATS = 3
# A dispatch holds a lock: two at once would each count the same free slots and send twice
# as many jobs. A dispatch takes milliseconds, so the lock lapses after LOCK_TIMEOUT_S (a
# process killed holding it stalls dispatch no longer), and a caller waits for it at most
# LOCK_WAIT_S, then gives up (the next trigger or the maintenance run dispatches).
LOCK_TIMEOUT_S = 3.0
LOCK_WAIT_S = 3.0


@dataclass
class Dispatched:
    """What one dispatch did: the jobs sent to Redis, and the jobs expired (start_by passed)."""

    sent: list[uuid.UUID] = field(default_factory=list)
    expired: list[uuid.UUID] = field(default_factory=list)


def _redis(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.enqueue_timeout,
        socket_connect_timeout=settings.enqueue_timeout,
    )


def slots_key(settings: Settings) -> str:
    """The Redis hash of the announced worker slots of the render queue."""
    return f"oneiro:{settings.queue}:slots"


def lock_key(settings: Settings) -> str:
    """The Redis lock one dispatch at a time holds (dispatch)."""
    return f"oneiro:{settings.queue}:dispatch"


def announce_slot(settings: Settings, name: str, slots: int = 1) -> bool:
    """Say that worker process `name` serves `slots` renders, for SLOT_TTL_BEATS heartbeats;
    whether Redis had no announcement of it (its first, or Redis lost it: a restart)."""
    until = time.time() + SLOT_TTL_BEATS * settings.heartbeat_interval
    with _redis(settings) as client:
        # The class's queue: a dispatch counts each worker class's slots apart.
        entry = json.dumps({"slots": slots, "until": until, "queue": worker_queue(settings)})
        return bool(client.hset(slots_key(settings), name, entry))


def withdraw_slot(settings: Settings, name: str) -> None:
    """Worker process `name` is stopping: its slot is gone now, not when it lapses."""
    with _redis(settings) as client:
        client.hdel(slots_key(settings), name)


def announced_slots(settings: Settings, client: redis.Redis | None = None) -> int:
    """The render slots of the workers alive now (lapsed announcements are removed); on
    `client` when given (a dispatch's own connection), else on a new one."""
    return sum(slots_by_queue(settings, client).values())


def slots_by_queue(settings: Settings, client: redis.Redis | None = None) -> Counter[str]:
    """announced_slots, by the render queue (worker class) each serves."""
    if client is None:
        with _redis(settings) as own:
            return slots_by_queue(settings, own)
    now, default = time.time(), render_queues(settings)[0]
    # A sync client: a dict of bytes (redis-py types its answers sync-or-async, its keys str).
    entries = cast("dict[Any, bytes]", client.hgetall(slots_key(settings)))
    found: Counter[str] = Counter()
    lapsed = []
    for name, raw in entries.items():
        try:
            entry = json.loads(raw)
            alive, slots = entry["until"] > now, int(entry["slots"])
            queue = str(entry.get("queue") or default)
        except (ValueError, KeyError, TypeError):
            alive, slots, queue = False, 0, default
        if alive:
            found[queue] += slots
        else:
            lapsed.append(name)
    if lapsed:
        client.hdel(slots_key(settings), *lapsed)
    return found


IN_FLIGHT = or_(
    Job.status == JobStatus.RUNNING,
    and_(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None)),
)
IN_BACKLOG = and_(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_(None))


def in_flight(session: Session) -> int:
    """Jobs that hold a slot or will on delivery: running, or dispatched and not yet claimed."""
    # Two counts, each one range of ix_jobs_status_enqueued; their OR in one WHERE is read as
    # a scan of every queued row.
    count = select(func.count()).select_from(Job)
    running = session.scalar(count.where(Job.status == JobStatus.RUNNING)) or 0
    sent = session.scalar(count.where(Job.status == JobStatus.QUEUED, Job.enqueued_at.is_not(None)))
    return running + (sent or 0)


def fair_order(per_tenant: int | None = None, lateral: bool = True) -> Select[uuid.UUID]:
    """The backlog's job ids in dispatch order (see the module's docstring); with
    `per_tenant`, only the first that many of each tenant's are looked at, which is all the
    first `per_tenant` of the order can hold (`lateral`: whether the database has LATERAL)."""
    ranked = ranked_backlog(per_tenant, lateral).subquery()
    return select(ranked.c.id).order_by(*fair_key(ranked))


def fair_key(ranked: Any) -> tuple[Any, ...]:
    """The dispatch order's sort key of a ranked_backlog row: its tenant's share, then age.
    Priority orders a tenant's own jobs (in `nth`) and never one tenant's against another's
    (README: How the queue chooses): equal shares go oldest first."""
    return (ranked.c.share, ranked.c.created_at, ranked.c.id)


def ranked_backlog(per_tenant: int | None = None, lateral: bool = True) -> Select[Any]:
    """The backlog's jobs (id, tenant_id, created_at, work) with `share`: their tenant's load
    once the jobs ahead in its own order are running, over its weight (fair_order sorts on
    it; shared/standing.py Share does the same arithmetic to count a job's place)."""
    load = (
        select(Job.tenant_id, func.count().label("jobs"))
        .where(IN_FLIGHT)
        .group_by(Job.tenant_id)
        .subquery()
    )
    columns = (Job.id, Job.tenant_id, Job.priority, Job.created_at, Job.work)
    own_order = (Job.priority, Job.created_at, Job.id)
    if per_tenant is None:
        candidates = select(*columns).where(IN_BACKLOG).subquery()
    else:
        candidates = _firsts_of_each_tenant(columns, own_order, per_tenant, lateral)
    backlog = select(
        candidates.c.id,
        candidates.c.tenant_id,
        candidates.c.created_at,
        candidates.c.work,
        func.row_number()
        .over(
            partition_by=candidates.c.tenant_id,
            order_by=(candidates.c.priority, candidates.c.created_at, candidates.c.id),
        )
        .label("nth"),
    ).subquery()
    # The tenant's load once the jobs ahead of this one in its own order are running.
    share = (func.coalesce(load.c.jobs, 0) + backlog.c.nth - 1) / func.coalesce(Tenant.weight, 1.0)
    return (
        select(
            backlog.c.id,
            backlog.c.tenant_id,
            backlog.c.created_at,
            backlog.c.work,
            share.label("share"),
        )
        .outerjoin(load, load.c.tenant_id == backlog.c.tenant_id)
        .outerjoin(Tenant, Tenant.id == backlog.c.tenant_id)
    )


def _firsts_of_each_tenant(
    columns: tuple[Any, ...], own_order: tuple[Any, ...], per_tenant: int, lateral: bool
) -> Subquery:
    """Each tenant's first `per_tenant` backlog jobs in its own order, read from
    ix_jobs_backlog instead of sorting the whole backlog: what keeps a dispatch fast behind
    10,000 queued jobs (benchmarks/dispatch.py)."""
    no_tenant = (  # jobs from before tenants existed
        select(*columns)
        .where(IN_BACKLOG, Job.tenant_id.is_(None))
        .order_by(*own_order)
        .limit(per_tenant)
        .subquery()
    )
    if lateral:  # PostgreSQL: a LATERAL subquery per tenant
        firsts = (
            select(*columns)
            .where(IN_BACKLOG, Job.tenant_id == Tenant.id)
            .order_by(*own_order)
            .limit(per_tenant)
            .lateral()
        )
        of_tenants = select(firsts).select_from(Tenant).join(firsts, true())
    else:  # SQLite: the same as a correlated IN, evaluated once per tenant
        other = aliased(Job)
        firsts_ids = (
            select(other.id)
            .where(
                other.tenant_id == Tenant.id,
                other.status == JobStatus.QUEUED,
                other.enqueued_at.is_(None),
            )
            .order_by(other.priority, other.created_at, other.id)
            .limit(per_tenant)
        )
        of_tenants = select(*columns).select_from(Tenant).join(Job, Job.id.in_(firsts_ids))
    return union_all(of_tenants, select(no_tenant)).subquery()


def choose(session: Session, count: int) -> list[uuid.UUID]:
    """The next `count` backlog jobs in fair order, locked for this transaction.

    On PostgreSQL a row another transaction holds (a cancel, a second dispatcher whose lock
    lapsed) is skipped rather than waited for; SQLite serializes writers anyway.
    """
    if count <= 0:
        return []
    lateral = session.get_bind().dialect.name == "postgresql"
    wanted = list(session.scalars(fair_order(count, lateral).limit(count)))
    if not wanted:
        return []
    locked = set(
        session.scalars(
            select(Job.id).where(Job.id.in_(wanted), IN_BACKLOG).with_for_update(skip_locked=True)
        )
    )
    return [job_id for job_id in wanted if job_id in locked]


def dispatch(session: Session, celery: Celery, settings: Settings) -> Dispatched:
    """Expire the jobs past their start_by, then send Redis as many jobs, in fair order, as
    there are free slots (plus the look-ahead). Commits; never sends before committing."""
    done = Dispatched()
    with _redis(settings) as client:
        # Each expiry is its own conditional UPDATE: safe without the lock.
        done.expired = expire_overdue(session, celery, settings)
        # A farm with no free slot (the usual state behind a backlog) needs no lock: whatever
        # frees a slot later dispatches after its own commit. So submits to a busy farm never
        # queue up on the lock.
        if not any(free > 0 for free in _free(session, settings, client).values()):
            return done
        lock = client.lock(
            lock_key(settings),
            timeout=LOCK_TIMEOUT_S,
            blocking_timeout=LOCK_WAIT_S,
        )
        if not lock.acquire():
            log.warning("dispatch: another dispatch held the lock for %gs; skipped", LOCK_WAIT_S)
            return done
        try:
            chosen = _choose_for(session, settings, _free(session, settings, client))
            now = utcnow()
            for job_id in chosen:
                transitions.mark_dispatched(session, job_id, now)
            session.commit()
            done.sent = _send(session, celery, settings, chosen)
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # it lapsed meanwhile
                lock.release()
    return done


def _free(session: Session, settings: Settings, client: redis.Redis) -> dict[str, int]:
    """Slots free now, plus the look-ahead, by render queue: what a dispatch may send to each
    worker class. On a farm of one class, one count; with classes, each class's slots less
    the jobs in flight on its queue, and a look-ahead only for a class with a worker (a job
    sent to a class with none would wait in Redis, out of the fair order)."""
    slots, queues = slots_by_queue(settings, client), render_queues(settings)
    lookahead = settings.dispatch_lookahead
    if len(queues) == 1:
        free = {queues[0]: sum(slots.values()) + lookahead - in_flight(session)}
    else:
        flying = Counter(
            render_queue(settings, job) for job in session.scalars(select(Job).where(IN_FLIGHT))
        )
        free = {
            queue: slots[queue] + (lookahead if slots[queue] else 0) - flying[queue]
            for queue in queues
        }
    session.commit()  # end the read's transaction: the choice reads afresh under the lock
    return free


# With worker classes, how many backlog jobs a dispatch weighs per free slot: the next jobs in
# fair order may all be of a class with no slot free.
CANDIDATES_PER_SLOT = 20


def _choose_for(session: Session, settings: Settings, free: dict[str, int]) -> list[uuid.UUID]:
    """The backlog jobs to send now, in fair order: on a farm of one class the first as many as
    are free; with classes, the first in fair order whose class has a slot free, each class
    filled apart (a free large slot is not spent on a job that waits for a small one)."""
    if len(free) == 1:
        return choose(session, next(iter(free.values())))
    wanted = choose(session, CANDIDATES_PER_SLOT * sum(max(0, count) for count in free.values()))
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(wanted)))}
    chosen = []
    for job_id in wanted:
        queue = render_queue(settings, jobs[job_id])
        if free.get(queue, 0) > 0:
            free[queue] -= 1
            chosen.append(job_id)
    return chosen


def _send(
    session: Session, celery: Celery, settings: Settings, job_ids: list[uuid.UUID]
) -> list[uuid.UUID]:
    """Send the dispatched jobs' messages in order, each to the queue of the smallest worker
    class that holds it (render_queue); return those sent. When Redis does not take one, it
    and the rest go back to the backlog, to be chosen again next time."""
    # Each job's queue is chosen before a send's commit can expire the rows read.
    jobs = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(job_ids)))}
    queues = [render_queue(settings, jobs[job_id]) for job_id in job_ids]
    for n, (job_id, queue) in enumerate(zip(job_ids, queues, strict=True)):
        try:
            enqueue_render(celery, job_id, queue)
        except Exception:
            log.exception("job %s dispatched but not sent; it waits in the backlog", job_id)
            transitions.unmark_dispatched(session, job_ids[n:])
            session.commit()
            return job_ids[:n]
    return job_ids


def expire_overdue(session: Session, celery: Celery, settings: Settings) -> list[uuid.UUID]:
    """End as expired every queued job whose start_by has passed; tell its watchers."""
    now = utcnow()
    overdue = session.execute(
        select(Job.id, Job.start_by).where(Job.status == JobStatus.QUEUED, Job.start_by < now)
    ).all()
    # start_by is set on every row the query found (NULL < now is not true).
    expired = [
        job_id
        for job_id, start_by in overdue
        if start_by is not None and transitions.expire(session, job_id, start_by)
    ]
    session.commit()
    for job_id in expired:
        log.info("job %s expired: not started by its start_by", job_id)
        publish_change(settings.redis_url, job_id)
        send_event(celery, session, job_id, "completed")
    return expired


def safely_dispatch(session: Session, celery: Celery, settings: Settings) -> Dispatched:
    """dispatch, for the callers it must never fail (a submit, a render's end): a database or
    Redis away is logged, and the maintenance run dispatches later."""
    try:
        return dispatch(session, celery, settings)
    except Exception:
        log.exception("dispatch failed: queued jobs not enqueued now; maintenance dispatches later")
        session.rollback()
        return Dispatched()
