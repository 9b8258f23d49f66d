"""The dispatcher's and the standing's arithmetic on fixed rows, with no worker and no clock
(issue 28): the weighted fair share, the free slots of a worker class, a running job's progress in
a queued job's start estimate, and start_by expiry. Each of these once had a bug put in that
every end-to-end test let through."""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared import standing
from shared.cost import megapixel_steps
from shared.dispatch import (
    announce_slot,
    choose,
    dispatch,
    expire_overdue,
    fair_order,
    lock_key,
    withdraw_slot,
)
from shared.models import Job, JobStatus, utcnow
from shared.queue import create_celery
from shared.settings import Settings
from shared.standing import queue_standings
from shared.storage import Storage
from shared.tenants import set_weight
from tests.utils import make_job, tenant_named, webhook_statuses

TINY = {"steps": 1, "octaves": 1, "seed": 3}


def jobs_of(
    session: Session, storage: Storage, tenant: str, count: int, **fields: Any
) -> list[uuid.UUID]:
    """`count` queued backlog jobs of `tenant`, oldest first."""
    tenant_id = tenant_named(session, tenant).id
    return [
        make_job(session, storage, tenant_id=tenant_id, params=TINY, **fields).id
        for _ in range(count)
    ]


def test_weight_two_against_one_gets_two_picks_of_three(session: Session, storage: Storage) -> None:
    # The light tenant's jobs are older: ties go by age, so without weights it would lead.
    light = set(jobs_of(session, storage, "light", 25))
    heavy = set(jobs_of(session, storage, "heavy", 25))
    set_weight(session, "heavy", 2)

    order = list(session.scalars(fair_order().limit(30)))
    # The dispatcher's own reading (each tenant's first jobs only) picks the same.
    assert choose(session, 30) == order
    picks = Counter("heavy" if job_id in heavy else "light" for job_id in order)
    # Shares (n - 1) / weight: heavy 0, 0.5, 1, ...; light 0, 1, 2, ...: 20 to 10 (equal
    # weights would give 15 each).
    assert picks == {"heavy": 20, "light": 10}
    assert order[0] in light  # at a tie (both at 0), the older job first


def test_no_free_slot_chooses_nothing_even_when_more_are_in_flight_than_slots(
    session: Session, storage: Storage
) -> None:
    jobs_of(session, storage, "someone", 3)
    # A slot lapses while its job still runs: the free count goes below zero. SQLite reads a
    # negative LIMIT as none and PostgreSQL refuses it; either would be wrong here.
    assert choose(session, 0) == []
    assert choose(session, -2) == []
    assert len(choose(session, 2)) == 2


def test_jobs_never_sent_but_no_longer_queued_take_no_backlog_place(
    session: Session, storage: Storage
) -> None:
    # The relay put a job back in the backlog while its message was still in Redis, and a
    # worker claimed it: running, with no enqueued_at. Jobs canceled or expired before they
    # were sent have none either. Its tenant's waiting jobs go as before.
    for status in (JobStatus.RUNNING, JobStatus.CANCELED, JobStatus.EXPIRED, JobStatus.SUCCEEDED):
        jobs_of(session, storage, "someone", 1, status=status)
    waiting = jobs_of(session, storage, "someone", 2)
    assert choose(session, 2) == waiting


@pytest.mark.parametrize("database_kind", ["postgresql"], indirect=True)
def test_a_backlog_job_another_transaction_holds_is_skipped_not_waited_for(
    sessions: sessionmaker[Session], storage: Storage
) -> None:
    with sessions() as session, sessions() as other:
        held, free = jobs_of(session, storage, "someone", 2)
        # A cancel of `held` in flight: its row is locked until that transaction ends.
        other.execute(select(Job).where(Job.id == held).with_for_update())
        session.execute(text("SET LOCAL lock_timeout = '5s'"))  # a wait fails the test
        assert choose(session, 2) == [free]
        other.rollback()


def test_a_running_job_holds_its_slot_with_nothing_sent(
    settings: Settings, session: Session, storage: Storage
) -> None:
    settings = settings.model_copy(update={"dispatch_lookahead": 0})
    jobs_of(session, storage, "someone", 1, status=JobStatus.RUNNING, enqueued_at=utcnow())
    jobs_of(session, storage, "someone", 1)
    announce_slot(settings, "w1")
    try:
        assert dispatch(session, create_celery(settings), settings).sent == []
        announce_slot(settings, "w2")  # a second worker: now one slot is free
        assert len(dispatch(session, create_celery(settings), settings).sent) == 1
    finally:
        withdraw_slot(settings, "w1")
        withdraw_slot(settings, "w2")


def test_jobs_sent_and_ended_before_a_worker_took_them_hold_no_slot(
    settings: Settings, session: Session, storage: Storage
) -> None:
    settings = settings.model_copy(update={"dispatch_lookahead": 0})
    for status in (JobStatus.CANCELED, JobStatus.FAILED, JobStatus.EXPIRED):
        make_job(session, storage, params=TINY, status=status, enqueued_at=utcnow())
    waiting = make_job(session, storage, params=TINY)
    announce_slot(settings, "w1")
    try:
        assert dispatch(session, create_celery(settings), settings).sent == [waiting.id]
    finally:
        withdraw_slot(settings, "w1")


def test_jobs_redis_does_not_take_go_back_to_the_backlog(
    settings: Settings, session: Session, storage: Storage
) -> None:
    settings = settings.model_copy(update={"dispatch_lookahead": 2})
    waiting = jobs_of(session, storage, "someone", 2)
    announce_slot(settings, "w1")
    # The broker away while the dispatcher's own Redis answers: each send fails after its
    # retries, and the jobs, already marked and committed as dispatched, are unmarked.
    unreachable = create_celery(settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"}))
    try:
        assert dispatch(session, unreachable, settings).sent == []
    finally:
        withdraw_slot(settings, "w1")
        unreachable.close()
    session.expire_all()
    assert [session.get(Job, job_id).enqueued_at for job_id in waiting] == [None, None]
    assert choose(session, 2) == waiting  # chosen again next time, in the same order


def test_a_full_farm_does_not_wait_for_the_dispatch_lock(
    settings: Settings, session: Session, storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings.model_copy(update={"dispatch_lookahead": 0})
    # One slot and two jobs running (a slot lapsed meanwhile): no slot is free, one over.
    jobs_of(session, storage, "someone", 2, status=JobStatus.RUNNING, enqueued_at=utcnow())
    jobs_of(session, storage, "someone", 1)
    announce_slot(settings, "w1")
    client = redis.Redis.from_url(settings.redis_url)
    held = client.lock(lock_key(settings), timeout=30)
    assert held.acquire()
    try:
        with caplog.at_level(logging.WARNING, logger="shared.dispatch"):
            assert dispatch(session, create_celery(settings), settings).sent == []
        # Submits to a busy farm never queue on the lock: this one did not even try it.
        assert not [r for r in caplog.records if "held the lock" in r.getMessage()]
    finally:
        held.release()
        withdraw_slot(settings, "w1")
        client.close()


def test_jobs_in_flight_count_against_their_tenants_share(
    session: Session, storage: Storage
) -> None:
    busy = jobs_of(session, storage, "busy", 3, status=JobStatus.RUNNING)
    busy += jobs_of(session, storage, "busy", 1, enqueued_at=utcnow())  # sent, not claimed
    waiting = jobs_of(session, storage, "busy", 2)
    idle = jobs_of(session, storage, "idle", 5)
    # busy's next job weighs as its fifth in flight: idle's first four go ahead of it, and
    # idle's fifth ties with it (share 4) and is younger.
    assert list(session.scalars(fair_order())) == [*idle[:4], waiting[0], idle[4], waiting[1]]
    # Weight 4: busy's shares are 4/4 and 5/4, ahead of idle's share 2 (at idle's 1, the
    # older job first).
    set_weight(session, "busy", 4)
    expected = [idle[0], waiting[0], idle[1], waiting[1], *idle[2:]]
    assert list(session.scalars(fair_order())) == expected
    assert not set(busy) & set(session.scalars(fair_order()))


def start_estimate(session: Session, job_id: uuid.UUID, rate: float) -> float:
    standing = queue_standings(session, [job_id], rate=rate, slots=1)[job_id]
    return float(standing["estimated_start_seconds"])


def test_a_running_jobs_progress_shortens_the_wait_behind_it(
    session: Session, storage: Storage
) -> None:
    running = make_job(
        session, storage, params=TINY, status=JobStatus.RUNNING, progress={"fraction": 0.75}
    )
    queued = make_job(session, storage, params=TINY)
    work = megapixel_steps(running.input_width, running.input_height, running.params)
    # A rate that makes the work of one tiny job 1000 s: the figure is rounded to 0.1 s.
    rate = work / 1000
    assert start_estimate(session, queued.id, rate) == pytest.approx(250, abs=0.2)


def test_standing_sent_jobs_first_then_the_backlog_each_waiting_for_the_work_ahead(
    session: Session, storage: Storage
) -> None:
    later = make_job(session, storage, params=TINY)  # in the backlog, though older
    sent = make_job(session, storage, params=TINY, enqueued_at=utcnow())
    big = make_job(session, storage, params=TINY, frames=3)  # every frame counted
    # Jobs that were sent too, and have started or ended since: no longer standing in line.
    running = make_job(
        session, storage, params=TINY, status=JobStatus.RUNNING, enqueued_at=utcnow()
    )
    ended = make_job(
        session, storage, params=TINY, status=JobStatus.SUCCEEDED, enqueued_at=utcnow()
    )
    canceled = make_job(
        session, storage, params=TINY, status=JobStatus.CANCELED, enqueued_at=utcnow()
    )
    unit = megapixel_steps(sent.input_width, sent.input_height, sent.params)
    ids = [later.id, sent.id, big.id, running.id, ended.id, canceled.id, uuid.uuid4()]

    shown = queue_standings(session, ids, rate=unit / 100, slots=2)

    # Only queued jobs stand; Redis's jobs go first, then the backlog in fair order.
    assert {job_id: s["position"] for job_id, s in shown.items()} == {
        sent.id: 1,
        later.id: 2,
        big.id: 3,
    }
    # Two slots of 100 s a unit: the running job's unit, then each job ahead, over 2 slots.
    starts = {job_id: s["estimated_start_seconds"] for job_id, s in shown.items()}
    assert starts == {
        sent.id: pytest.approx(50, abs=0.2),
        later.id: pytest.approx(100, abs=0.2),
        big.id: pytest.approx(150, abs=0.2),
    }
    # Said to a tenth of a second: the running unit over 3 slots.
    thirds = queue_standings(session, [sent.id], rate=unit / 100, slots=3)
    assert thirds[sent.id]["estimated_start_seconds"] == 33.3
    # The estimate of a later job counts the work of the one ahead of it: three frames.
    behind = make_job(session, storage, params=TINY)
    ahead_of_behind = queue_standings(session, [behind.id], rate=unit / 100, slots=1)
    assert ahead_of_behind[behind.id] == {
        "position": 4,
        "estimated_start_seconds": pytest.approx(100 * (1 + 1 + 1 + 3), abs=0.2),
    }
    # No measured speed, or no worker: positions only, the start unknown (null).
    for rate, slots in ((None, 2), (0.0, 2), (unit, 0), (unit, -1)):
        unknown = queue_standings(session, [big.id], rate=rate, slots=slots)
        assert unknown == {big.id: {"position": 3, "estimated_start_seconds": None}}
    assert queue_standings(session, [], rate=unit, slots=1) == {}
    assert queue_standings(session, [running.id], rate=unit, slots=1) == {}


def test_every_queued_jobs_standing_is_its_place_in_the_dispatch_order_and_the_work_ahead(
    session: Session, storage: Storage
) -> None:
    # Three tenants of different weights and loads, jobs of three sizes and priorities,
    # interleaved in time, two already in Redis: each job's standing, counted from its tenant's
    # share (shared/standing.py), must be exactly its place in the order the dispatcher sends.
    light, heavy, idle = (tenant_named(session, name).id for name in ("light", "heavy", "idle"))
    set_weight(session, "heavy", 3)
    set_weight(session, "light", 0.5)
    running = make_job(
        session,
        storage,
        params=TINY,
        status=JobStatus.RUNNING,
        tenant_id=heavy,
        progress={"fraction": 0.5},
    )
    make_job(session, storage, params=TINY, status=JobStatus.RUNNING, tenant_id=light)
    sizes = [
        {"steps": 1, "octaves": 1, "seed": 3},
        {"steps": 3, "octaves": 1, "seed": 3},
        {"steps": 2, "octaves": 2, "seed": 3},
    ]
    for n in range(7):
        for tenant in (light, heavy, idle)[: 1 + n % 3]:
            make_job(session, storage, params=sizes[n % 3], tenant_id=tenant, priority=n % 3)
    for _ in range(2):
        make_job(session, storage, params=TINY, tenant_id=idle, enqueued_at=utcnow())
        make_job(session, storage, params=TINY, tenant_id=None)  # from before tenants: weight 1
    order = standing.dispatch_order(session)
    work = dict(session.execute(select(Job.id, Job.work).where(Job.id.in_(order))).all())
    assert len(order) == len(work) == 13 + 2 + 2  # every queued job, once

    rate, slots = 0.01, 3
    shown = queue_standings(session, [*order, running.id], rate=rate, slots=slots)

    before = standing._running_work_left(session)
    assert before > 0
    expected = {}
    for place, job_id in enumerate(order):
        expected[job_id] = {
            "position": place + 1,
            "estimated_start_seconds": round(before / (rate * slots), 1),
        }
        before += work[job_id]
    assert shown == expected


def test_a_job_sent_while_its_standing_is_read_stands_last_of_the_sent(
    session: Session,
    storage: Storage,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race seen under concurrent submits with one Idempotency-Key: the loser read the
    # winner's job in the backlog, the winner's dispatch sent it, then the tenants' shares were
    # read without it (a KeyError, a 500). Here the dispatcher acts between the same two reads.
    sent = make_job(session, storage, params=TINY, enqueued_at=utcnow())
    job = jobs_of(session, storage, "solo", 1)[0]
    read_shares = standing.tenant_shares

    def dispatched_meanwhile(reader: Session) -> dict[uuid.UUID | None, standing.Share]:
        with sessions() as dispatcher:
            dispatcher.execute(update(Job).where(Job.id == job).values(enqueued_at=utcnow()))
            dispatcher.commit()
        return read_shares(reader)

    monkeypatch.setattr(standing, "tenant_shares", dispatched_meanwhile)
    unit = megapixel_steps(sent.input_width, sent.input_height, sent.params)
    shown = queue_standings(session, [sent.id, job], rate=unit / 100, slots=1)
    assert shown[sent.id]["position"] == 1
    assert shown[job] == {"position": 2, "estimated_start_seconds": pytest.approx(100, abs=0.2)}


def test_a_running_video_counts_every_frame_left_in_the_wait_behind_it(
    session: Session, storage: Storage
) -> None:
    running = make_job(session, storage, params=TINY, status=JobStatus.RUNNING, frames=4)
    queued = make_job(session, storage, params=TINY)
    work = megapixel_steps(running.input_width, running.input_height, running.params)
    assert start_estimate(session, queued.id, work / 1000) == pytest.approx(4000, abs=0.2)


def test_an_expired_job_tells_its_webhook(
    settings: Settings, session: Session, storage: Storage
) -> None:
    job = make_job(
        session,
        storage,
        params=TINY,
        start_by=utcnow() - timedelta(seconds=1),
        webhook_url="https://hooks.example.com/x",
        webhook_events=["completed"],
    )
    celery = create_celery(settings)
    try:
        assert expire_overdue(session, celery, settings) == [job.id]
    finally:
        celery.close()
    session.refresh(job)
    assert job.status == JobStatus.EXPIRED
    assert webhook_statuses(settings) == [("expired", job.error)]


def test_a_job_already_sent_to_redis_expires_too(
    settings: Settings, session: Session, storage: Storage
) -> None:
    past = utcnow() - timedelta(seconds=1)
    in_backlog = make_job(session, storage, params=TINY, start_by=past)
    sent = make_job(session, storage, params=TINY, start_by=past, enqueued_at=utcnow())
    on_time = make_job(session, storage, params=TINY, start_by=utcnow() + timedelta(hours=1))
    started = make_job(session, storage, params=TINY, start_by=past, status=JobStatus.RUNNING)
    celery = create_celery(settings)
    try:
        expired = expire_overdue(session, celery, settings)
    finally:
        celery.close()
    # A message in Redis is no start: its worker finds the job expired and drops it.
    assert sorted(expired) == sorted([in_backlog.id, sent.id])
    for job, status in [(on_time, JobStatus.QUEUED), (started, JobStatus.RUNNING)]:
        session.refresh(job)
        assert job.status == status
