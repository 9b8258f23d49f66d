"""Two maintenance runs at once (two beats on one Redis): only one does the work."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import maintenance_tasks, make_job
from worker.maintenance import maintenance_lock
from worker.runtime import Runtime


@pytest.fixture
def tasks(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """worker.tasks, its maintain task running on the test database and storage."""
    return maintenance_tasks(monkeypatch, runtime)  # type: ignore[no-any-return]


def _stale_job(session: Session, storage: Storage, settings: Settings) -> Job:
    silent_since = utcnow() - timedelta(seconds=settings.lease_seconds + 60)
    return make_job(
        session,
        storage,
        status=JobStatus.RUNNING,
        attempt=1,
        worker="gone:1",
        started_at=silent_since,
        heartbeat_at=silent_since,
    )


def test_two_maintenance_runs_at_once_do_the_work_once(
    session: Session,
    storage: Storage,
    settings: Settings,
    tasks: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stale = _stale_job(session, storage, settings)
    reaps: list[float] = []
    real_reap = tasks.reap_stale_jobs

    def slow_reap(*args: Any, **kwargs: Any) -> Any:
        reaps.append(time.monotonic())
        time.sleep(0.5)  # long enough for the other run to arrive while this one works
        return real_reap(*args, **kwargs)

    monkeypatch.setattr(tasks, "reap_stale_jobs", slow_reap)
    runs = [threading.Thread(target=tasks.maintain) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=30)
    assert len(reaps) == 1
    session.expire_all()
    assert session.get_one(Job, stale.id).status == JobStatus.QUEUED
    # The lock is given back: the next round runs.
    tasks.maintain()
    assert len(reaps) == 2


def test_a_run_while_another_holds_the_lock_changes_nothing(
    session: Session, storage: Storage, settings: Settings, tasks: ModuleType
) -> None:
    stale = _stale_job(session, storage, settings)
    other = maintenance_lock(settings)
    assert other.acquire()
    try:
        tasks.maintain()
        session.expire_all()
        assert session.get_one(Job, stale.id).status == JobStatus.RUNNING
    finally:
        other.release()
    tasks.maintain()
    session.expire_all()
    assert session.get_one(Job, stale.id).status == JobStatus.QUEUED
