"""The worker's fenced state writes, cancel check, heartbeat and progress, seen in the job row.

What the mutation run (`make mutate TARGETS=job-state`) found the other tests let through: a
write into a finished row of the same attempt, a heartbeat that never notices its job was
taken or dies with the database's first hiccup, a database away read as "canceled", webhook
progress events not spaced, and the progress row's rounding.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import delete, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job, JobStatus, utcnow
from shared.queue import webhook_queue
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import engine_progress, make_job, wait_for, with_settings
from worker.jobs import LostJob, run_job
from worker.runtime import Runtime
from worker.watchers import Heartbeat, ProgressReporter, ShouldStop


class Flaky:
    """A session factory whose database can be sent away (`away = True`) and brought back."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions, self.away = sessions, False

    def _reachable(self) -> None:
        if self.away:
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("the database is away"))

    def __call__(self) -> Session:
        self._reachable()
        return self.sessions()

    def begin(self) -> Any:
        self._reachable()
        return self.sessions.begin()


@pytest.fixture
def flaky(sessions: sessionmaker[Session]) -> Flaky:
    return Flaky(sessions)


@pytest.fixture
def runtime(settings: Settings, flaky: Flaky, storage: Storage) -> Runtime:
    return Runtime(settings=settings, sessions=flaky, storage=storage, name="w")  # type: ignore[arg-type]


def reload(session: Session, job: Job) -> Job:
    session.expire_all()
    return session.get_one(Job, job.id)


def running(session: Session, storage: Storage, **fields: Any) -> Job:
    """A job attempt 1 of which is running, its last heartbeat an hour ago."""
    an_hour_ago = utcnow() - timedelta(hours=1)
    return make_job(
        session, storage, status=JobStatus.RUNNING, attempt=1, heartbeat_at=an_hour_ago, **fields
    )


def test_a_worker_claims_only_the_queued_job_it_was_sent_and_only_once(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    # A dry run claims, stores and records like a render, without the engine.
    dry = with_settings(runtime, dry_run=True)
    neighbours = [make_job(session, storage, id=uuid.UUID(int=n)) for n in (1, 3)]
    job = make_job(session, storage, id=uuid.UUID(int=2))
    others = {
        status: make_job(session, storage, status=status, attempt=1)
        for status in JobStatus
        if status != JobStatus.QUEUED
    }

    assert run_job(job.id, dry) == JobStatus.SUCCEEDED
    assert run_job(job.id, dry) is None  # a redelivered message

    done = reload(session, job)
    assert (done.status, done.attempt, done.worker) == (JobStatus.SUCCEEDED, 1, "w")
    assert [(reload(session, n).status, reload(session, n).attempt) for n in neighbours] == [
        (JobStatus.QUEUED, 0)
    ] * 2
    for status, other in others.items():
        assert run_job(other.id, dry) is None
        assert (reload(session, other).status, reload(session, other).attempt) == (status, 1)


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
def test_a_finished_job_takes_no_late_write_from_its_own_attempt(
    runtime: Runtime, session: Session, storage: Storage, status: JobStatus
) -> None:
    job = make_job(session, storage, status=status, attempt=1, progress={"fraction": 1.0})

    with pytest.raises(LostJob):
        ProgressReporter(runtime, job.id, attempt=1)(engine_progress())

    assert reload(session, job).progress == {"fraction": 1.0}


def test_the_progress_row_rounds_the_fraction_to_six_places_and_the_eta_to_one(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = running(session, storage)
    reporter = ProgressReporter(runtime, job.id, attempt=1)

    reporter(engine_progress(fraction=1 / 3, eta_seconds=12.3456))
    assert reload(session, job).progress == {
        "fraction": 0.333333,
        "octave": 1,
        "octaves": 2,
        "step": 3,
        "steps": 8,
        "tiles_done": 5,
        "tiles": 6,
        "eta_seconds": 12.3,
    }
    reporter(engine_progress(eta_seconds=None))  # no estimate yet: none shown
    assert reload(session, job).progress["eta_seconds"] is None


def test_progress_writes_are_spaced_by_the_interval_the_first_at_once(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = running(session, storage)
    reporter = ProgressReporter(with_settings(runtime, progress_interval=0.3), job.id, 1)
    written = []
    started = time.monotonic()
    n = 0
    # A full second of reports, however fast this machine makes them: the fractions only grow.
    while time.monotonic() - started <= 1.0:
        n += 1
        reporter(engine_progress(fraction=n / 10**6))
        fraction = reload(session, job).progress.get("fraction")
        if fraction is not None and fraction not in written:
            written.append(fraction)
    took = time.monotonic() - started

    assert written[0] == 1 / 10**6  # the first report
    assert 2 <= len(written) <= took / 0.3 + 1, f"{len(written)} writes in {took:.2f} s"


def test_a_progress_write_with_the_database_away_is_skipped_not_fatal(
    runtime: Runtime, flaky: Flaky, session: Session, storage: Storage
) -> None:
    job = running(session, storage)
    reporter = ProgressReporter(runtime, job.id, attempt=1)

    flaky.away = True
    reporter(
        engine_progress(fraction=0.25)
    )  # the render goes on; the next write supersedes this one
    flaky.away = False
    assert reload(session, job).progress == {}
    reporter(engine_progress(fraction=0.5))
    assert reload(session, job).progress["fraction"] == 0.5


def test_the_cancel_check_goes_on_while_the_database_is_away(
    runtime: Runtime, flaky: Flaky, session: Session, storage: Storage
) -> None:
    # The heartbeat and the lease decide then: a render is not thrown away for a hiccup.
    job = running(session, storage)
    heartbeat = Heartbeat(runtime, job.id, attempt=1)
    ours = ShouldStop(runtime, job.id, 1, heartbeat)
    assert ours() is False
    flaky.away = True
    assert ours() is False
    # But a heartbeat that found the job taken stops the render without asking the database.
    heartbeat.lost.set()
    assert ours() is True


def test_the_cancel_check_stops_a_job_whose_row_is_gone(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = running(session, storage)
    ours = ShouldStop(runtime, job.id, 1, Heartbeat(runtime, job.id, attempt=1))
    session.execute(delete(Job).where(Job.id == job.id))
    session.commit()
    assert ours() is True


@pytest.mark.parametrize(
    ("status", "attempt", "stop"),
    [
        (JobStatus.RUNNING, 1, False),
        (JobStatus.CANCELED, 1, True),
        (JobStatus.QUEUED, 1, True),  # the reaper put it back
        (JobStatus.FAILED, 1, True),  # the reaper gave up on it
        (JobStatus.RUNNING, 2, True),  # another worker took it
    ],
)
def test_the_cancel_check_reads_only_its_own_row(
    runtime: Runtime,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    status: JobStatus,
    attempt: int,
    stop: bool,
) -> None:
    # Neighbours on either side of its id, in the state that would stop it and the one that
    # would not: only its own row decides.
    make_job(session, storage, id=uuid.UUID(int=1), status=JobStatus.CANCELED, attempt=1)
    job = running(session, storage, id=uuid.UUID(int=2))
    make_job(session, storage, id=uuid.UUID(int=3), status=JobStatus.RUNNING, attempt=1)
    ours = ShouldStop(runtime, job.id, 1, Heartbeat(runtime, job.id, attempt=1))
    with sessions.begin() as other:
        other.execute(update(Job).where(Job.id == job.id).values(status=status, attempt=attempt))
    assert ours() is stop


def heartbeat_of(session: Session, job: Job) -> Any:
    return reload(session, job).heartbeat_at


def test_the_heartbeat_beats_until_its_job_is_taken_then_says_so_and_stops(
    runtime: Runtime, sessions: sessionmaker[Session], session: Session, storage: Storage
) -> None:
    job = running(session, storage)
    stale = heartbeat_of(session, job)
    with Heartbeat(with_settings(runtime, heartbeat_interval=0.02), job.id, 1) as heartbeat:
        wait_for(lambda: heartbeat_of(session, job) != stale, 5, "a heartbeat")
        assert not heartbeat.lost.is_set()
        with sessions.begin() as reaper:  # the job went to another worker: attempt 2
            reaper.execute(
                update(Job).where(Job.id == job.id).values(attempt=2, heartbeat_at=stale)
            )
        wait_for(heartbeat.lost.is_set, 5, "the heartbeat noticing the loss")
    assert heartbeat_of(session, job) == stale  # nothing written into attempt 2's row


def test_the_heartbeat_outlives_a_database_hiccup(
    runtime: Runtime,
    flaky: Flaky,
    session: Session,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job = running(session, storage)
    with Heartbeat(with_settings(runtime, heartbeat_interval=0.02), job.id, 1) as heartbeat:
        flaky.away = True
        wait_for(lambda: failed_beats(caplog), 5, "a heartbeat failing")
        stale = heartbeat_of(session, job)
        flaky.away = False
        wait_for(lambda: heartbeat_of(session, job) != stale, 5, "a heartbeat after the hiccup")
        assert not heartbeat.lost.is_set()
    assert all(record.exc_info for record in failed_beats(caplog))  # traceback and all


def failed_beats(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if r.getMessage().startswith("heartbeat of job")]


def webhook_events(settings: Settings) -> list[str]:
    """The events of the webhook deliveries waiting on this test's webhook queue."""
    client = redis.Redis.from_url(settings.redis_url)
    messages = client.lrange(webhook_queue(settings), 0, -1)
    client.close()
    bodies = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][2] for m in messages]
    return [json.loads(body)["type"] for body in bodies]


@pytest.fixture
def webhook_queue_emptied(settings: Settings) -> Iterator[None]:
    client = redis.Redis.from_url(settings.redis_url)
    client.delete(webhook_queue(settings))
    yield
    client.delete(webhook_queue(settings))
    client.close()


@pytest.mark.usefixtures("webhook_queue_emptied")
def test_webhook_progress_events_are_spaced_by_their_own_interval(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = running(
        session, storage, webhook_url="https://example.invalid/hook", webhook_events=["progress"]
    )
    # Every report is written (progress_interval 0); an event at most every 0.3 s.
    reporter = ProgressReporter(with_settings(runtime, webhook_progress_interval=0.3), job.id, 1)
    started = time.monotonic()
    while time.monotonic() - started < 1.0:
        reporter(engine_progress())
        time.sleep(0.02)
    took = time.monotonic() - started

    events = webhook_events(runtime.settings)
    assert set(events) == {"progress"}
    assert 1 <= len(events) <= took / 0.3, f"{len(events)} progress events in {took:.2f} s"
