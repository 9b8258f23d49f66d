"""The job runner in-process: claim, render, store, record; against real databases."""

from __future__ import annotations

import dataclasses
import io
import time
import uuid
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from shared import transitions
from shared.models import Job, JobStatus
from shared.storage import Storage
from tests.utils import before_each_gradient, engine_progress, image_bytes, make_job, with_settings
from worker.jobs import LostJob, claim_job, run_job
from worker.runtime import Runtime
from worker.watchers import ProgressReporter


def reload(session: Session, job: Job) -> Job:
    session.expire_all()
    return session.get_one(Job, job.id)


def test_a_job_runs_to_success(runtime: Runtime, session: Session, storage: Storage) -> None:
    job = make_job(
        session,
        storage,
        image=image_bytes((100, 80)),
        params={"steps": 2, "octaves": 2, "seed": 1, "max_dim": 90},
    )

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    done = reload(session, job)
    assert done.status == JobStatus.SUCCEEDED
    assert done.attempt == 1 and done.worker == "test-worker"
    assert done.started_at is not None and done.finished_at is not None
    assert done.progress["fraction"] == 1.0 and done.progress["octaves"] == 2
    with Image.open(io.BytesIO(storage.get(done.result_key or ""))) as result:
        assert result.format == "PNG" and result.size == (90, 72)


def test_a_redelivered_job_is_not_rendered_again(
    runtime: Runtime, session: Session, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(session, storage)
    renders = []
    original = Runtime.dream_model
    monkeypatch.setattr(
        Runtime,
        "dream_model",
        lambda self, layers: renders.append(layers) or original(self, layers),
    )

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    finished = reload(session, job).finished_at
    assert run_job(job.id, runtime) is None

    again = reload(session, job)
    assert len(renders) == 1
    assert again.attempt == 1 and again.finished_at == finished


def test_only_one_of_two_claims_wins(
    sessions: sessionmaker[Session], session: Session, storage: Storage
) -> None:
    job = make_job(session, storage)
    with sessions.begin() as first:
        won = claim_job(first, job.id, "a")
    with sessions.begin() as second:
        lost = claim_job(second, job.id, "b")
    assert won == 1 and lost is None
    assert reload(session, job).worker == "a"


def test_only_the_queued_job_asked_for_is_claimed(session: Session, storage: Storage) -> None:
    # Ids on either side, and every other status: a claim reaches no other row.
    neighbours = [make_job(session, storage, id=uuid.UUID(int=n)) for n in (1, 3)]
    job = make_job(session, storage, id=uuid.UUID(int=2))
    others = {
        status: make_job(session, storage, status=status)
        for status in JobStatus
        if status != JobStatus.QUEUED
    }

    assert claim_job(session, job.id, "w") == 1
    for status, other in others.items():
        assert claim_job(session, other.id, "w") is None
        assert reload(session, other).status == status
    session.commit()
    assert {reload(session, n).status for n in neighbours} == {JobStatus.QUEUED}


def test_a_progress_write_reaches_only_its_own_row(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    # Running jobs of the same attempt, with ids on either side of this one's.
    rows = [
        make_job(session, storage, id=uuid.UUID(int=n), status=JobStatus.RUNNING, attempt=1)
        for n in (2, 1, 3)
    ]

    ProgressReporter(runtime, rows[0].id, attempt=1)(engine_progress())

    assert reload(session, rows[0]).progress["fraction"] == 0.5
    assert [reload(session, row).progress for row in rows[1:]] == [{}, {}]


def test_an_unknown_job_id_does_nothing(runtime: Runtime) -> None:
    assert run_job(uuid.uuid4(), runtime) is None


def test_a_missing_input_fails_the_job_readably(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = make_job(session, storage)
    storage.delete(job.input_key)

    assert run_job(job.id, runtime) == JobStatus.FAILED

    failed = reload(session, job)
    assert failed.status == JobStatus.FAILED and failed.finished_at is not None
    assert failed.error == f"the input image of this job is missing from storage ({job.input_key})"


def test_unavailable_weights_fail_the_job_with_advice(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    runtime = with_settings(runtime, weights="/nowhere/inception.h5")
    job = make_job(session, storage)

    assert run_job(job.id, runtime) == JobStatus.FAILED

    error = reload(session, job).error or ""
    assert "/nowhere/inception.h5" in error and "ONEIRO_WEIGHTS" in error


def test_a_worker_that_lost_its_claim_cannot_write(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    job = make_job(session, storage, status=JobStatus.RUNNING, attempt=2)
    stale = ProgressReporter(runtime, job.id, attempt=1)
    canceled = make_job(session, storage, status=JobStatus.CANCELED, attempt=1)
    own_but_canceled = ProgressReporter(runtime, canceled.id, attempt=1)

    for reporter in (stale, own_but_canceled):
        with pytest.raises(LostJob):
            reporter(engine_progress())
    assert reload(session, job).progress == {} and reload(session, canceled).progress == {}


def test_a_job_runs_with_s3_storage(runtime: Runtime, session: Session, s3_url: str) -> None:
    from shared.storage import open_storage

    s3 = open_storage(s3_url)
    runtime = dataclasses.replace(runtime, storage=s3)
    job = make_job(session, s3, image=image_bytes((90, 80)))

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    with Image.open(io.BytesIO(s3.get(reload(session, job).result_key or ""))) as result:
        assert result.size == (90, 80)


def test_a_dry_run_stores_the_input_as_the_result_without_the_engine(
    runtime: Runtime, session: Session, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_engine(*_args: object) -> None:
        raise AssertionError("a dry run must not load a model")

    monkeypatch.setattr(Runtime, "dream_model", no_engine)
    dry = with_settings(runtime, dry_run=True)
    job = make_job(session, storage, image=image_bytes((100, 80)), params={"max_dim": 50})

    assert run_job(job.id, dry) == JobStatus.SUCCEEDED

    done = reload(session, job)
    with Image.open(io.BytesIO(storage.get(done.result_key or ""))) as result:
        assert result.size == (50, 40)
    assert done.progress["fraction"] == 1.0


def test_a_succeeded_job_reads_complete_though_progress_was_throttled(
    runtime: Runtime, session: Session, storage: Storage
) -> None:
    # One progress write per hour: only the first report reaches the row before the end.
    slow = with_settings(runtime, progress_interval=3600.0)
    job = make_job(
        session,
        storage,
        image=image_bytes((100, 80)),
        params={"steps": 3, "octaves": 2, "seed": 1, "max_dim": 90, "tile_size": 64},
    )
    assert run_job(job.id, slow) == JobStatus.SUCCEEDED
    progress = reload(session, job).progress
    assert progress["step"] == progress["steps"] == 3
    assert progress["octave"] == progress["octaves"] == 2
    assert progress["tiles"] and progress["tiles_done"] == progress["tiles"]
    assert progress["fraction"] == 1.0 and progress["eta_seconds"] == 0.0


def record_progress_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, dict]]:
    """(monotonic time, progress) of every progress write the worker makes to the job row."""
    writes: list[tuple[float, dict]] = []
    original = transitions.update_running

    def recording(session: Session, job_id: uuid.UUID, attempt: int, **values: Any) -> None:
        original(session, job_id, attempt, **values)
        if "progress" in values and "status" not in values:  # not the final write
            writes.append((time.monotonic(), values["progress"]))

    monkeypatch.setattr(transitions, "update_running", recording)
    return writes


def test_progress_names_the_step_under_way(
    runtime: Runtime, session: Session, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = record_progress_writes(monkeypatch)
    job = make_job(session, storage, params={"steps": 4, "octaves": 2, "seed": 1})

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED

    # progress_interval=0 (the test settings): one write per tile batch, one batch per step.
    seen = [(p["octave"], p["step"], p["steps"], p["octaves"]) for _, p in writes]
    assert seen == [(o, s, 4, 2) for o in (1, 2) for s in (1, 2, 3, 4)]


def test_progress_writes_are_spaced_by_the_progress_interval(
    runtime: Runtime, session: Session, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = record_progress_writes(monkeypatch)
    # When the reporter decided to write, on its own clock: the moment a write ends depends on
    # how long the database took, which is not what the interval spaces.
    decided: list[float] = []
    report = ProgressReporter.__call__

    def reporting(self: ProgressReporter, progress: Any) -> None:
        before = self.writes.last
        report(self, progress)
        if self.writes.last != before:
            decided.append(self.writes.last)

    monkeypatch.setattr(ProgressReporter, "__call__", reporting)
    # 24 batches of at least 0.05 s each: at least 1.2 s of render, reported after every batch.
    before_each_gradient(monkeypatch, lambda _n: time.sleep(0.05))
    spaced = with_settings(runtime, progress_interval=0.4)
    job = make_job(session, storage, params={"steps": 12, "octaves": 2, "seed": 1})

    assert run_job(job.id, spaced) == JobStatus.SUCCEEDED

    assert 2 <= len(writes) < 24, f"{len(writes)} progress writes for 24 batches"
    assert len(decided) == len(writes)
    gaps = [later - earlier for earlier, later in zip(decided, decided[1:], strict=False)]
    assert min(gaps) >= 0.4, f"progress writes closer than the interval: {gaps}"
