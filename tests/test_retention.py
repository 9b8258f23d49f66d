"""Retention: the files of jobs that ended long ago are deleted by maintenance; the row stays,
marked expired, and the API says the files are gone (410)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db import create_session_factory
from shared.models import IdempotencyKey, Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import Storage, checkpoint_key, preview_key
from tests.test_api import assert_problem
from tests.test_idempotency import post
from tests.utils import image_bytes, make_job
from worker.maintenance import expire_old_files
from worker.runtime import Runtime


def with_files(
    session: Session, storage: Storage, ended_days_ago: float | None, **kw: object
) -> Job:
    job = make_job(session, storage, **kw)
    job.result_key = f"results/{job.id}.png"
    job.finished_at = None if ended_days_ago is None else utcnow() - timedelta(days=ended_days_ago)
    session.commit()
    for key in (job.result_key, preview_key(job.id), checkpoint_key(job.id)):
        storage.put(key, b"data")
    return job


def keys_of(job: Job) -> list[str]:
    return [job.input_key, f"results/{job.id}.png", preview_key(job.id), checkpoint_key(job.id)]


def test_old_jobs_lose_their_files_and_keep_their_rows(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    old = with_files(session, storage, 31, status=JobStatus.SUCCEEDED)
    old_failed = with_files(session, storage, 40, status=JobStatus.FAILED, error="boom")
    recent = with_files(session, storage, 1, status=JobStatus.SUCCEEDED)
    running = with_files(session, storage, None, status=JobStatus.RUNNING)
    ids = {j.id for j in (old, old_failed, recent, running)}
    month = settings.model_copy(update={"retention_seconds": 30 * 24 * 3600.0})

    expired = expire_old_files(session, storage, month)

    assert set(expired) == {old.id, old_failed.id}
    for job in (old, old_failed):
        assert not any(storage.exists(key) for key in keys_of(job))
    for job in (recent, running):
        assert all(storage.exists(key) for key in keys_of(job))
    session.expire_all()
    assert {j.id for j in session.scalars(select(Job))} == ids  # every row remains
    gone = session.get_one(Job, old.id)
    assert gone.expired_at is not None and gone.status == JobStatus.SUCCEEDED
    assert session.get_one(Job, recent.id).expired_at is None

    shown = client.get(f"/v1/jobs/{old.id}").get_json()
    assert shown["expired"] is True and shown["result_url"] is None
    assert shown["status"] == "succeeded"
    for route in ("result", "preview"):
        body = assert_problem(client.get(f"/v1/jobs/{old.id}/{route}"), 410)
        assert "retention" in body["detail"]
    assert_problem(client.post(f"/v1/jobs/{old_failed.id}/retry"), 410)  # its input is gone
    assert client.get(f"/v1/jobs/{recent.id}").get_json()["expired"] is False
    assert client.get(f"/v1/jobs/{recent.id}/preview").status_code == 200

    assert expire_old_files(session, storage, month) == []  # nothing twice


def test_expiring_one_job_touches_no_other_row(
    session: Session, storage: Storage, settings: Settings
) -> None:
    # Ids on either side of the old job's, so a mark that reached past its own row would show.
    low, high = uuid.UUID(int=1), uuid.UUID(int=2**128 - 1)
    recent = with_files(session, storage, 1, id=low, status=JobStatus.SUCCEEDED)
    running = with_files(session, storage, None, id=uuid.UUID(int=2), status=JobStatus.RUNNING)
    old = with_files(session, storage, 40, id=uuid.UUID(int=2**127), status=JobStatus.FAILED)
    newest = with_files(session, storage, 2, id=high, status=JobStatus.CANCELED)

    assert expire_old_files(session, storage, settings) == [old.id]  # 30 days by default

    session.expire_all()
    for job in (recent, running, newest):
        kept = session.get_one(Job, job.id)
        assert kept.expired_at is None and kept.result_key == f"results/{job.id}.png"


def test_idempotency_keys_older_than_a_day_are_forgotten(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    for key in ("old", "new"):
        assert post(client, key, image_bytes()).status_code == 202
    session.query(IdempotencyKey).filter_by(key="old").update(
        {"created_at": utcnow() - timedelta(hours=25)}
    )
    session.commit()

    expire_old_files(session, storage, settings)

    assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]
    assert session.scalar(select(func.count()).select_from(Job)) == 2  # the jobs stay


def test_the_periodic_maintenance_task_expires_old_files(
    session: Session, storage: Storage, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared.queue import MAINTAIN_TASK, create_celery
    from worker import tasks

    old = with_files(session, storage, 2, status=JobStatus.CANCELED)
    runtime = Runtime(
        settings=settings.model_copy(update={"retention_seconds": 86400.0}),
        sessions=create_session_factory(session.get_bind()),  # type: ignore[arg-type]
        storage=storage,
        name="maintenance",
    )
    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    # What beat schedules is this task, and the task runs retention with the reaper and relay.
    schedule = create_celery(settings).conf.beat_schedule
    assert [entry["task"] for entry in schedule.values()] == [MAINTAIN_TASK]
    tasks.maintain()
    session.expire_all()
    assert session.get_one(Job, old.id).expired_at is not None
    assert not storage.exists(old.input_key)
