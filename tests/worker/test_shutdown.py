"""A worker asked to stop (SIGTERM) mid-render hands its job back at once, with a checkpoint of
where it stopped, and the next worker finishes it to the same image (worker/shutdown.py)."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job, JobStatus
from shared.queue import create_celery, enqueue_render
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import CHELSEA, make_job, start_worker, stop_process, wait_for
from worker.engine import DreamState

pytestmark = pytest.mark.chaos

PARAMS = {"steps": 14, "octaves": 3, "seed": 11, "max_dim": 200, "tile_size": 128}
WORKER_ENV = {
    # Periodic checkpoints at octave ends only: the one a hand-back leaves is taken at the stop.
    "ONEIRO_CHECKPOINT_EVERY": "1000",
    "ONEIRO_HEARTBEAT_INTERVAL": "0.2",
    "ONEIRO_PROGRESS_INTERVAL": "0.1",
    # Far longer than the test waits: only the hand-back can put the job back in time.
    "ONEIRO_LEASE_SECONDS": "600",
}
# How long the job may take to be queued again after the SIGTERM: one tile batch and a write.
HAND_BACK_S = 10.0


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_process(process)


def row(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_a_sigterm_mid_render_hands_the_job_back_and_the_next_worker_finishes_it(
    pool: str,
    workers: list[subprocess.Popen[bytes]],
    settings: Settings,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    tmp_path: Path,
) -> None:
    def start(name: str) -> subprocess.Popen[bytes]:
        process = start_worker(
            settings, tmp_path / f"{name}.log", pool=pool, hostname=f"{name}@%h", env=WORKER_ENV
        )
        workers.append(process)
        return process

    celery = create_celery(settings)
    reference = make_job(session, storage, image=CHELSEA.read_bytes(), params=PARAMS)
    job = make_job(session, storage, image=CHELSEA.read_bytes(), params=PARAMS)
    enqueue_render(celery, reference.id)
    enqueue_render(celery, job.id)
    first = start(f"first-{uuid.uuid4().hex[:6]}")
    wait_for(
        lambda: row(sessions, reference.id).status == JobStatus.SUCCEEDED,
        180,
        "the uninterrupted reference render",
    )
    wait_for(
        lambda: (
            (r := row(sessions, job.id)).status == JobStatus.RUNNING
            and r.checkpoint_key is not None
            and r.progress.get("fraction", 0) > 0.1
        ),
        120,
        "the job's render past its first checkpoints",
    )

    first.send_signal(signal.SIGTERM)
    asked = time.monotonic()
    back = wait_for(
        lambda: (r := row(sessions, job.id)).status == JobStatus.QUEUED and r,
        HAND_BACK_S,
        "the job queued again",
    )
    handed_back_s = time.monotonic() - asked
    assert back.attempt == 1 and back.worker is None
    assert back.checkpoint_key is not None and storage.exists(back.checkpoint_key)
    # Saved where the render stopped, not the last octave end's periodic checkpoint.
    state = DreamState.from_bytes(storage.get(back.checkpoint_key))
    assert state.step < PARAMS["steps"], (state.octave, state.step)
    assert first.wait(timeout=HAND_BACK_S) == 0, "the worker did not exit on its own"

    start(f"second-{uuid.uuid4().hex[:6]}")
    done = wait_for(
        lambda: (r := row(sessions, job.id)).status.is_terminal() and r,
        180,
        "the job finished by the next worker",
    )
    celery.close()
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert done.attempt == 2
    # The engine's resume is deterministic: the image of an uninterrupted render.
    assert storage.get(done.result_key or "") == storage.get(
        row(sessions, reference.id).result_key or ""
    )
    print(f"shutdown ({pool}): job queued again {handed_back_s:.2f}s after the SIGTERM")
