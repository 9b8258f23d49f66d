"""Crash safety in-process: checkpoints and resume, heartbeats and fencing, reaper, relay."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import event, update
from sqlalchemy.orm import Session, sessionmaker

from shared.dispatch import dispatch
from shared.models import Job, JobStatus, utcnow
from shared.queue import create_celery, queue_keys
from shared.settings import Settings
from shared.storage import Storage, checkpoint_key, preview_key, result_key
from shared.transitions import send_job
from tests.utils import before_each_gradient, image_bytes, make_job, queued_job_ids, with_settings
from worker.jobs import run_job
from worker.maintenance import reap_stale_jobs, relay_queued_jobs
from worker.runtime import Runtime

PARAMS = {"steps": 3, "octaves": 2, "seed": 5, "tile_size": 64, "max_dim": 100}


class Crash(BaseException):
    """Stands for kill -9: nothing in the worker catches it, nothing is cleaned up."""


def crash_after(calls: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the worker die at its `calls`-th gradient call."""

    def die(n: int) -> None:
        if n == calls:
            raise Crash

    before_each_gradient(monkeypatch, die)


def reload(session: Session, job_id: uuid.UUID) -> Job:
    session.expire_all()
    return session.get_one(Job, job_id)


def test_a_job_killed_mid_render_resumes_from_its_checkpoint_to_the_same_image(
    runtime: Runtime,
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = with_settings(runtime, checkpoint_every=1, lease_seconds=1)
    image = image_bytes((100, 80))
    reference = make_job(session, storage, image=image, params=PARAMS)
    assert run_job(reference.id, runtime) == JobStatus.SUCCEEDED
    expected = storage.get(reload(session, reference.id).result_key or "")

    job = make_job(session, storage, image=image, params=PARAMS)
    with monkeypatch.context() as patch:
        crash_after(5, patch)  # in octave 2: octave 1 and a step are saved
        with pytest.raises(Crash):
            run_job(job.id, runtime)
    dead = reload(session, job.id)
    assert dead.status == JobStatus.RUNNING and dead.checkpoint_key == checkpoint_key(job.id, 1)

    session.execute(
        update(Job).where(Job.id == job.id).values(heartbeat_at=utcnow() - timedelta(seconds=5))
    )
    session.commit()
    requeued, failed = reap_stale_jobs(session, runtime.settings)
    assert requeued == [job.id] and failed == []

    progress: list[float] = []
    monkeypatch.setattr(
        "worker.watchers.ProgressReporter.__call__", lambda self, p: progress.append(p.fraction)
    )
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    done = reload(session, job.id)
    assert done.attempt == 2
    assert storage.get(done.result_key or "") == expected
    assert progress[0] > 0.5  # it resumed: the first octave was not done again
    assert done.checkpoint_key is None
    assert not any(storage.exists(checkpoint_key(job.id, n)) for n in (1, 2))


def test_a_worker_whose_job_was_taken_stops_and_writes_nothing(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = with_settings(runtime, heartbeat_interval=0.01)
    job = make_job(session, storage, params={**PARAMS, "steps": 50})

    def taken(_n: int) -> None:
        # Meanwhile the reaper gave the job to another worker (attempt 2).
        with sessions.begin() as other:
            other.execute(update(Job).where(Job.id == job.id).values(attempt=2, worker="b"))

    before_each_gradient(monkeypatch, taken)

    assert run_job(job.id, runtime) is None

    after = reload(session, job.id)
    assert after.status == JobStatus.RUNNING and after.attempt == 2 and after.worker == "b"
    assert after.result_key is None


def test_a_worker_that_lost_its_job_writes_no_file_of_the_newer_attempt(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One tile per step, a preview and a checkpoint after every step, no progress write (that
    # would notice the loss first): the stale worker's next writes are files.
    runtime = with_settings(
        runtime,
        checkpoint_every=1,
        preview_interval=0.0,
        progress_interval=3600.0,
    )
    job = make_job(session, storage, image=image_bytes((48, 40)), params={"steps": 6, "octaves": 1})
    newer = {
        checkpoint_key(job.id, 2): b"attempt 2 checkpoint",
        preview_key(job.id, 2): b"attempt 2 preview",
        result_key(job.id, 2): b"attempt 2 result",
    }
    own = [checkpoint_key(job.id, 1), preview_key(job.id, 1), result_key(job.id, 1)]
    at_loss: dict[str, bytes | None] = {}

    def taken(n: int) -> None:
        if n != 3:
            return
        # The reaper gave the job to another worker, whose attempt 2 has written its files.
        with sessions.begin() as other:
            other.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(attempt=2, worker="b", heartbeat_at=utcnow())
            )
        for key, data in newer.items():
            storage.put(key, data)
        at_loss.update({key: storage.get(key) if storage.exists(key) else None for key in own})

    before_each_gradient(monkeypatch, taken)

    assert run_job(job.id, runtime) is None

    assert {key: storage.get(key) for key in newer} == newer
    # Nothing of its own either after it lost the job: no preview, checkpoint or result.
    assert at_loss[checkpoint_key(job.id, 1)] is not None  # it had been writing until then
    assert {key: storage.get(key) if storage.exists(key) else None for key in own} == at_loss
    assert not storage.exists(result_key(job.id, 1))
    assert reload(session, job.id).checkpoint_key == checkpoint_key(job.id, 1)


def test_a_long_step_with_a_live_heartbeat_is_not_reaped(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Progress writes refresh the heartbeat too; in a step that reports nothing for longer than
    # the lease, only the heartbeat thread keeps the job from the reaper.
    runtime = with_settings(runtime, heartbeat_interval=0.1, lease_seconds=1.0, progress_interval=0)
    job = make_job(session, storage, params=PARAMS)
    reaped: list[tuple[list[uuid.UUID], list[uuid.UUID]]] = []

    def long_step(n: int) -> None:
        if n == 2:
            time.sleep(2.5)  # 2.5 leases without progress
            with sessions() as reaper:
                reaped.append(reap_stale_jobs(reaper, runtime.settings))

    before_each_gradient(monkeypatch, long_step)

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    assert reaped == [([], [])]
    done = reload(session, job.id)
    assert done.status == JobStatus.SUCCEEDED and done.attempt == 1


def test_the_soft_time_limit_fails_the_job_saying_which_limit(
    runtime: Runtime,
    session: Session,
    storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = with_settings(runtime, soft_time_limit=30.0)
    job = make_job(session, storage, params=PARAMS)

    def past_the_limit(n: int) -> None:
        if n == 2:  # what Celery raises in the task when task_soft_time_limit passes
            raise SoftTimeLimitExceeded()

    before_each_gradient(monkeypatch, past_the_limit)

    assert run_job(job.id, runtime) == JobStatus.FAILED

    failed = reload(session, job.id)
    assert failed.error == (
        "the render ran past the time limit (ONEIRO_SOFT_TIME_LIMIT) and was stopped"
    )
    assert failed.result_key is None and not storage.exists(checkpoint_key(job.id, 1))
    assert create_celery(runtime.settings).conf.task_soft_time_limit == 30.0


def test_the_reaper_requeues_silent_jobs_and_fails_them_after_the_last_attempt(
    settings: Settings, session: Session, storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    old = utcnow() - timedelta(seconds=settings.lease_seconds + 5)
    silent = make_job(
        session, storage, status=JobStatus.RUNNING, attempt=1, worker="w1", heartbeat_at=old
    )
    exhausted = make_job(
        session,
        storage,
        status=JobStatus.RUNNING,
        worker="w2",
        attempt=settings.max_attempts,
        heartbeat_at=old,
    )
    alive = make_job(
        session, storage, status=JobStatus.RUNNING, attempt=1, worker="w3", heartbeat_at=utcnow()
    )

    requeued, failed = reap_stale_jobs(session, settings)

    assert requeued == [silent.id] and failed == [exhausted.id]
    assert reload(session, silent.id).status == JobStatus.QUEUED
    gave_up = reload(session, exhausted.id)
    assert gave_up.status == JobStatus.FAILED
    assert gave_up.error is not None and "w2 stopped answering" in gave_up.error
    assert f"attempt {settings.max_attempts} of {settings.max_attempts}" in gave_up.error
    assert reload(session, alive.id).status == JobStatus.RUNNING
    said = {r.job_id: r.getMessage() for r in caplog.records if r.name == "worker.maintenance"}
    assert said[str(silent.id)].endswith("; put back in the queue")
    assert said[str(exhausted.id)].endswith("; failed")


def test_the_reaper_puts_back_every_silent_job_of_one_attempt(
    settings: Settings, session: Session, storage: Storage
) -> None:
    old = utcnow() - timedelta(seconds=settings.lease_seconds + 5)
    # The middle id first: an update that reached past its own row, in either direction of
    # ids, would count the others with it.
    silent = [
        make_job(
            session,
            storage,
            id=uuid.UUID(int=n),
            status=JobStatus.RUNNING,
            attempt=1,
            heartbeat_at=old,
        )
        for n in (2, 1, 3)
    ]

    requeued, failed = reap_stale_jobs(session, settings)

    assert sorted(requeued) == sorted(job.id for job in silent) and failed == []
    assert {reload(session, job.id).status for job in silent} == {JobStatus.QUEUED}


def test_the_reaper_leaves_a_job_that_beat_or_ended_after_it_looked(
    settings: Settings, session: Session, sessions: sessionmaker[Session], storage: Storage
) -> None:
    old = utcnow() - timedelta(seconds=settings.lease_seconds + 5)
    beat, ended, canceled = (
        make_job(session, storage, status=JobStatus.RUNNING, attempt=1, heartbeat_at=old)
        for _ in range(3)
    )
    meanwhile: list[int] = []

    # Between the reaper's select and its first update, one worker beats, another finishes, a
    # third job is canceled.
    @event.listens_for(session, "do_orm_execute")
    def before_the_update(state: Any) -> None:
        if state.is_update and not meanwhile:
            meanwhile.append(1)
            with sessions.begin() as other:
                other.execute(update(Job).where(Job.id == beat.id).values(heartbeat_at=utcnow()))
                for job, status in ((ended, JobStatus.SUCCEEDED), (canceled, JobStatus.CANCELED)):
                    other.execute(update(Job).where(Job.id == job.id).values(status=status))

    assert reap_stale_jobs(session, settings) == ([], [])

    assert meanwhile == [1]
    assert reload(session, beat.id).status == JobStatus.RUNNING
    assert reload(session, ended.id).status == JobStatus.SUCCEEDED
    assert reload(session, canceled.id).status == JobStatus.CANCELED


def test_the_reaper_fails_a_silent_retried_job_past_max_attempts(
    settings: Settings, session: Session, storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    # A retry counts attempts on past the limit; its silent worker fails it, never requeues it.
    old = utcnow() - timedelta(seconds=settings.lease_seconds + 5)
    job = make_job(
        session,
        storage,
        status=JobStatus.RUNNING,
        attempt=settings.max_attempts + 1,
        heartbeat_at=old,
    )

    assert reap_stale_jobs(session, settings) == ([], [job.id])
    assert reload(session, job.id).status == JobStatus.FAILED
    (said,) = [r.getMessage() for r in caplog.records if r.name == "worker.maintenance"]
    assert said.endswith("; failed")


def test_the_relay_puts_back_what_redis_never_got_or_lost(
    settings: Settings, session: Session, storage: Storage
) -> None:
    never = make_job(session, storage)  # in the backlog: the dispatcher's, not the relay's
    recent = make_job(session, storage, enqueued_at=utcnow())
    long_ago = make_job(
        session, storage, enqueued_at=utcnow() - timedelta(seconds=settings.relay_after + 5)
    )
    # Jobs past the queue are never put back, however long ago they were enqueued.
    for status in (JobStatus.RUNNING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
        make_job(session, storage, status=status, enqueued_at=long_ago.enqueued_at)
    make_job(session, storage, status=JobStatus.SUCCEEDED)
    celery = create_celery(settings)

    put_back = relay_queued_jobs(session, celery, settings)
    celery.close()

    assert put_back == [long_ago.id]
    assert queued_job_ids(settings) == []  # the dispatcher sends it again, in its turn
    assert reload(session, long_ago.id).enqueued_at is None
    assert reload(session, recent.id).enqueued_at is not None
    assert reload(session, never.id).enqueued_at is None


def test_a_job_waiting_for_a_worker_stays_one_message_and_a_flushed_queue_is_refilled(
    settings: Settings, session: Session, storage: Storage, redis_url: str
) -> None:
    # Issue 10.8: 10 jobs with no worker became 39 messages in 110 s, every job still queued
    # after relay_after sent again on every round.
    celery = create_celery(settings)
    jobs = sorted(str(make_job(session, storage).id) for _ in range(10))
    for job_id in jobs:
        send_job(session, celery, uuid.UUID(job_id), settings.queue)

    for round_ in range(1, 6):
        later = utcnow() + timedelta(seconds=round_ * (settings.relay_after + 1))
        assert relay_queued_jobs(session, celery, settings, now=later) == []
    assert sorted(queued_job_ids(settings)) == jobs

    # A flushed Redis loses the messages: the next round puts each job back in the backlog
    # once, and the dispatcher sends each exactly once again.
    client = redis.Redis.from_url(redis_url)
    client.delete(*queue_keys(settings.queue))
    client.close()
    later = utcnow() + timedelta(seconds=10 * (settings.relay_after + 1))
    assert sorted(str(i) for i in relay_queued_jobs(session, celery, settings, now=later)) == jobs
    assert relay_queued_jobs(session, celery, settings, now=later) == []
    dispatch(session, celery, settings.model_copy(update={"dispatch_lookahead": 10}))
    dispatch(session, celery, settings.model_copy(update={"dispatch_lookahead": 10}))
    celery.close()
    assert sorted(queued_job_ids(settings)) == jobs


def test_the_relay_waits_relay_after_seconds_exactly(
    settings: Settings, session: Session, storage: Storage
) -> None:
    now = utcnow()
    due = make_job(session, storage, enqueued_at=now - timedelta(seconds=settings.relay_after + 1))
    make_job(session, storage, enqueued_at=now - timedelta(seconds=settings.relay_after))
    celery = create_celery(settings)

    sent = relay_queued_jobs(session, celery, settings, now=now)
    celery.close()

    assert sent == [due.id]


def test_a_hand_back_puts_back_only_the_attempt_still_running(
    session: Session, storage: Storage
) -> None:
    from shared import transitions

    job = make_job(session, storage, image=image_bytes((64, 48)), params=PARAMS)
    first = transitions.claim_job(session, job.id, "w1")
    session.commit()
    transitions.record_checkpoint(session, job.id, first or 0, "jobs/x/attempt-1/checkpoint.npz")
    transitions.hand_back(session, job.id, first or 0)
    session.commit()
    back = reload(session, job.id)
    assert (back.status, back.worker, back.enqueued_at) == (JobStatus.QUEUED, None, None)
    assert back.checkpoint_key == "jobs/x/attempt-1/checkpoint.npz"

    # A worker whose job was canceled, or taken by a newer attempt, puts back nothing.
    second = transitions.claim_job(session, job.id, "w2")
    session.commit()
    with pytest.raises(transitions.LostJob):
        transitions.hand_back(session, job.id, first or 0)
    assert transitions.cancel(session, job.id)
    session.commit()
    with pytest.raises(transitions.LostJob):
        transitions.hand_back(session, job.id, second or 0)
    assert reload(session, job.id).status == JobStatus.CANCELED
