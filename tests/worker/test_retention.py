"""Retention: the files of jobs that ended long ago are deleted by maintenance; the row stays,
marked expired, and the API says the files are gone (410)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.db import create_session_factory
from shared.models import IdempotencyKey, Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import (
    FileStorage,
    Storage,
    checkpoint_key,
    job_prefix,
    legacy_keys,
    preview_key,
    result_key,
    upload_key,
    upload_tail_key,
)
from tests.utils import (
    assert_problem,
    image_bytes,
    maintenance_tasks,
    make_job,
    submit_with_key,
    with_settings,
)
from worker.jobs import run_job
from worker.maintenance import TemporarySweeper, expire_old_files
from worker.runtime import Runtime


def with_files(
    session: Session, storage: Storage, ended_days_ago: float | None, **kw: object
) -> Job:
    job = make_job(session, storage, attempt=1, **kw)
    job.result_key = result_key(job.id, 1)
    job.finished_at = None if ended_days_ago is None else utcnow() - timedelta(days=ended_days_ago)
    session.commit()
    for key in keys_of(job)[1:]:
        storage.put(key, b"data")
    return job


def keys_of(job: Job) -> list[str]:
    return [job.input_key, result_key(job.id, 1), preview_key(job.id, 1), checkpoint_key(job.id, 1)]


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
    with client.get(f"/v1/jobs/{recent.id}/preview") as preview:  # closed: a streamed file
        assert preview.status_code == 200

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
        assert kept.expired_at is None and kept.result_key == result_key(job.id, 1)
        assert storage.exists(result_key(job.id, 1))


def test_idempotency_keys_older_than_a_day_are_forgotten(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    for key in ("old", "new"):
        assert submit_with_key(client, key, image_bytes()).status_code == 202
    session.query(IdempotencyKey).filter_by(key="old").update(
        {"created_at": utcnow() - timedelta(hours=25)}
    )
    session.commit()

    expire_old_files(session, storage, settings)

    assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]
    assert session.scalar(select(func.count()).select_from(Job)) == 2  # the jobs stay


def test_the_periodic_maintenance_task_expires_old_files(
    session: Session,
    storage: Storage,
    settings: Settings,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from shared.queue import MAINTAIN_TASK, create_celery

    old = with_files(session, storage, 2, status=JobStatus.CANCELED)
    tasks = maintenance_tasks(monkeypatch, with_settings(runtime, retention_seconds=86400.0))
    # What beat schedules is this task, and the task runs retention with the reaper and relay.
    schedule = create_celery(settings).conf.beat_schedule
    assert [entry["task"] for entry in schedule.values()] == [MAINTAIN_TASK]
    tasks.maintain()
    session.expire_all()
    assert session.get_one(Job, old.id).expired_at is not None
    assert not storage.exists(old.input_key)


def files_of(settings: Settings, job_id: uuid.UUID) -> list[str]:
    """Every file under the storage folder whose path names the job, temporaries included."""
    root = Path(settings.storage_url)
    return [
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and str(job_id) in str(p)
    ]


def test_a_result_written_just_before_a_cancel_is_deleted_by_retention(
    session: Session, storage: Storage, settings: Settings, runtime: Runtime
) -> None:
    # Issue 10.4: the cancel lands between the result's write and the worker's fenced finish,
    # so the row never records the result (5 of 5 tries left `results/<id>.png` forever).
    job = make_job(session, storage)
    canceled_at = []

    class CancelAfterResult(FileStorage):
        def put(self, key: str, data: bytes) -> None:
            super().put(key, data)
            if key.endswith("result.png"):
                with create_session_factory(session.get_bind())() as other:  # type: ignore[arg-type]
                    other.execute(
                        update(Job)
                        .where(Job.id == job.id)
                        .values(status=JobStatus.CANCELED, finished_at=utcnow())
                    )
                    other.commit()
                canceled_at.append(key)

    racing = CancelAfterResult(Path(settings.storage_url))
    runtime = dataclasses.replace(with_settings(runtime, dry_run=True), storage=racing)

    assert run_job(job.id, runtime) is None  # it lost the job at its finish

    session.expire_all()
    canceled = session.get_one(Job, job.id)
    assert canceled_at and canceled.status == JobStatus.CANCELED and canceled.result_key is None
    # A month later retention finds every file from the job alone.
    later = utcnow() + timedelta(seconds=settings.retention_seconds + 60)
    assert expire_old_files(session, storage, settings, now=later) == [job.id]
    assert files_of(settings, job.id) == []


def test_a_job_stored_under_the_older_keys_is_expired_whole(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    # Jobs written before per-job folders: inputs/, results/, previews/, checkpoints/.
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, attempt=1)
    old_result, old_preview, old_checkpoint = legacy_keys(job.id)
    storage.put(f"inputs/{job.id}.png", storage.get(job.input_key))
    storage.delete_prefix(job_prefix(job.id))
    job.input_key, job.result_key, job.checkpoint_key = f"inputs/{job.id}.png", old_result, None
    job.finished_at = utcnow() - timedelta(days=40)
    session.commit()
    for key in (old_result, old_preview, old_checkpoint):
        storage.put(key, image_bytes(fmt="JPEG" if key == old_preview else "PNG"))

    # Still readable through the API ...
    assert client.get(f"/v1/jobs/{job.id}/result").data == storage.get(old_result)
    assert client.get(f"/v1/jobs/{job.id}/preview").data == storage.get(old_preview)
    # ... and expired whole.
    assert expire_old_files(session, storage, settings) == [job.id]
    assert files_of(settings, job.id) == []


def test_stale_temporary_files_are_swept_and_fresh_ones_kept(
    storage: Storage, settings: Settings
) -> None:
    root = Path(settings.storage_url)
    killer = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from shared.storage import FileStorage\n"
        "os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)\n"
        "FileStorage(Path(sys.argv[1])).put(sys.argv[2], b'half a result')\n"
    )
    # Two writers killed (-9) mid-write; one long ago, one just now (or a write in progress).
    for key in (result_key(uuid.uuid4(), 1), result_key(uuid.uuid4(), 1)):
        died = subprocess.run([sys.executable, "-c", killer, str(root), key], check=False)
        assert died.returncode == -signal.SIGKILL
    old, fresh = sorted(root.rglob(".*.tmp"))
    an_hour = settings.temp_file_max_age
    os.utime(old, (time.time() - an_hour - 60,) * 2)
    storage.put("jobs/kept/input.png", b"a finished write")

    swept = TemporarySweeper()(storage, settings)

    assert swept == [old.relative_to(root).as_posix()]
    assert not old.exists() and fresh.exists()
    assert storage.get("jobs/kept/input.png") == b"a finished write"


def test_the_maintenance_task_sweeps_temporary_files_once_per_age(
    settings: Settings, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    tasks = maintenance_tasks(monkeypatch, runtime)
    monkeypatch.setattr(tasks, "sweep_temporary_files", TemporarySweeper())
    root = Path(settings.storage_url)

    def leftover(name: str) -> Path:
        path = root / "jobs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - settings.temp_file_max_age - 60,) * 2)
        return path

    first = leftover(".result.png.first.tmp")
    tasks.maintain()
    second = leftover(".result.png.second.tmp")
    tasks.maintain()  # within the age of the last sweep: the walk is not repeated

    assert not first.exists() and second.exists()


def test_a_job_made_from_an_upload_takes_the_uploads_folder_with_it(
    session: Session, storage: Storage, settings: Settings
) -> None:
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, attempt=1)
    upload = uuid.uuid4()
    # What a finished S3 upload leaves, or a file upload: the bytes, and maybe a stray tail.
    storage.put(upload_key(upload), storage.get(job.input_key))
    storage.put(upload_tail_key(upload), b"tail")
    job.input_key = upload_key(upload)
    job.finished_at = utcnow() - timedelta(days=40)
    session.commit()
    assert expire_old_files(session, storage, settings) == [job.id]
    assert not storage.exists(upload_key(upload)) and not storage.exists(upload_tail_key(upload))
    assert not (Path(settings.storage_url) / "uploads" / str(upload)).exists()
