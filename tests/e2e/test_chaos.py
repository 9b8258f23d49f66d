"""Chaos: a real Celery worker process killed with SIGKILL mid-render, again and again."""

from __future__ import annotations

import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from dev.localredis import start_redis
from shared.dispatch import dispatch
from shared.models import Job, JobStatus
from shared.queue import create_celery, enqueue_render
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import (
    CHELSEA,
    Proxy,
    image_bytes,
    kill_process,
    make_job,
    redis_on_free_port,
    start_worker,
    stop_process,
    wait_for,
)
from worker.maintenance import reap_stale_jobs, relay_queued_jobs

pytestmark = pytest.mark.chaos

KILLS = 5
PARAMS = {"steps": 14, "octaves": 3, "seed": 11, "max_dim": 200, "tile_size": 128}


class Workers:
    """Starts worker processes one after another, as a supervisor restarting a dead one would."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.env = {
            "ONEIRO_CHECKPOINT_EVERY": "1",
            "ONEIRO_HEARTBEAT_INTERVAL": "0.2",
            "ONEIRO_PROGRESS_INTERVAL": "0.1",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        number = len(self.processes) + 1
        self.processes.append(
            start_worker(
                self.settings,
                self.logs / f"worker-{number}.log",
                hostname=f"chaos{number}-{uuid.uuid4().hex[:4]}@%h",
                env=self.env,
            )
        )

    def kill(self) -> None:
        """SIGKILL the newest worker and its pool child: no cleanup, message unacknowledged."""
        kill_process(self.processes[-1])

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.logs.glob("worker-*.log")))


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    running = Workers(settings.model_copy(update={"lease_seconds": 1.5}), tmp_path)
    yield running
    running.stop()


@pytest.fixture
def own_redis(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, Any]]:
    """A Redis of this test's own, which it may kill: (settings pointing at it, restart)."""
    server, port = redis_on_free_port(tmp_path / "redis")
    servers = [server]

    def restart() -> None:
        servers[-1].kill()  # SIGKILL: no save, every message in it is gone
        servers[-1].wait()
        servers.append(start_redis(port, tmp_path / "redis"))

    yield settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0"}), restart
    servers[-1].terminate()
    servers[-1].wait(timeout=10)


def row(sessions: sessionmaker[Session], job_id: uuid.UUID) -> Job:
    with sessions() as session:
        return session.get_one(Job, job_id)


def test_five_kills_during_one_render_lose_nothing_and_change_nothing(
    workers: Workers,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
) -> None:
    settings = workers.settings
    celery = create_celery(settings)
    image = CHELSEA.read_bytes()
    reference = make_job(session, storage, image=image, params=PARAMS)
    job = make_job(session, storage, image=image, params=PARAMS)
    enqueue_render(celery, reference.id)
    enqueue_render(celery, job.id)
    workers.start()
    wait_for(
        lambda: row(sessions, reference.id).status == JobStatus.SUCCEEDED,
        120,
        "the uninterrupted reference render",
    )

    rng = random.Random(7)
    reworked, last_fraction = [], 0.0
    for kill in range(KILLS):
        # Let the render make real progress past the last checkpoint, then kill at a random
        # moment within the next step.
        wait_for(
            lambda floor=last_fraction + 0.02: (
                (r := row(sessions, job.id)).status == JobStatus.RUNNING
                and r.progress.get("fraction", 0) > floor
            ),
            120,
            f"progress before kill {kill + 1}",
        )
        time.sleep(rng.uniform(0.0, 0.3))
        workers.kill()
        killed = row(sessions, job.id)
        assert killed.status == JobStatus.RUNNING, "the job ended before the kill"
        last_fraction = killed.progress["fraction"]
        reworked.append(killed.progress)

        # The lease runs out; the reaper puts the job back and the relay re-sends it.
        time.sleep(settings.lease_seconds + 0.1)
        with sessions() as maintenance:
            requeued, failed = reap_stale_jobs(
                maintenance, settings.model_copy(update={"max_attempts": KILLS + 1})
            )
            assert requeued == [job.id] and failed == []
            relay_queued_jobs(maintenance, celery, settings)
        workers.start()

    done = wait_for(
        lambda: (r := row(sessions, job.id)).status.is_terminal() and r,
        180,
        "the job to finish after the last kill",
    )
    celery.close()

    assert done.status == JobStatus.SUCCEEDED, done.error
    # The worker logs its success after the row says so (and after dropping the checkpoints).
    log = wait_for(
        lambda: (text := workers.log()).count(f"job {job.id} succeeded") and text,
        10,
        "the worker's success line",
    )
    assert done.attempt == KILLS + 1
    assert storage.get(done.result_key or "") == storage.get(
        row(sessions, reference.id).result_key or ""
    )
    # Each attempt after a kill resumed from a checkpoint: never from the start.
    assert log.count(f"job {job.id} resumes at octave") == KILLS
    assert log.count(f"job {job.id} succeeded") == 1
    print(
        f"chaos: {KILLS} SIGKILLs survived, 0 jobs lost, 0 duplicate renders, "
        f"rework per kill at most one step (checkpoint every step); "
        f"fraction at each kill: {[round(p['fraction'], 3) for p in reworked]}"
    )


def test_two_workers_and_a_message_delivered_three_times_render_once(
    workers: Workers,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
) -> None:
    celery = create_celery(workers.settings)
    job = make_job(session, storage, image=CHELSEA.read_bytes(), params={**PARAMS, "steps": 4})
    workers.start()
    workers.start()
    for _ in range(3):
        enqueue_render(celery, job.id)
    celery.close()

    done = wait_for(lambda: (r := row(sessions, job.id)).status.is_terminal() and r, 120, "the job")
    wait_for(
        lambda: workers.log().count(f"job {job.id} is not queued") == 2,
        60,
        "both duplicates to be turned away",
    )

    assert done.status == JobStatus.SUCCEEDED and done.attempt == 1
    assert workers.log().count(f"job {job.id} attempt 1 claimed") == 1


def test_a_redis_restart_with_fifty_jobs_queued_loses_none_and_runs_none_twice(
    own_redis: tuple[Settings, Any],
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    tmp_path: Path,
) -> None:
    settings, restart_redis = own_redis
    workers = Workers(settings, tmp_path)
    celery = create_celery(settings)
    jobs = [
        make_job(
            session,
            storage,
            image=image_bytes((80, 80)),
            params={"steps": 1, "octaves": 1, "seed": i},
        )
        for i in range(50)
    ]
    try:
        # All fifty dispatched at once (a look-ahead of 50), so Redis holds a long queue to lose.
        dispatch(session, celery, settings.model_copy(update={"dispatch_lookahead": 50}))
        workers.start()
        wait_for(
            lambda: sum(row(sessions, j.id).status == JobStatus.SUCCEEDED for j in jobs) >= 3,
            120,
            "the first jobs",
        )

        restart_redis()  # every queued message is lost with it
        with sessions() as maintenance:  # what the next maintenance run does
            relay_queued_jobs(
                maintenance, celery, settings.model_copy(update={"relay_after": 0.001})
            )
            dispatch(maintenance, celery, settings)

        wait_for(
            lambda: all(row(sessions, j.id).status == JobStatus.SUCCEEDED for j in jobs),
            240,
            "all fifty jobs",
        )
    finally:
        celery.close()
        workers.stop()

    assert {row(sessions, j.id).attempt for j in jobs} == {1}
    log = workers.log()
    assert sum(log.count(f"job {j.id} attempt 1 claimed") for j in jobs) == 50


def test_a_database_outage_during_a_render_is_waited_out(
    workers: Workers,
    database_url: str,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    tmp_path: Path,
) -> None:
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("SQLite is a file, not a server that can go away")
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    workers.env["DATABASE_URL"] = through
    celery = create_celery(workers.settings)
    job = make_job(session, storage, image=CHELSEA.read_bytes(), params={**PARAMS, "steps": 12})
    try:
        enqueue_render(celery, job.id)
        workers.start()
        wait_for(
            lambda: row(sessions, job.id).progress.get("fraction", 0) > 0.1,
            120,
            "the render to be under way",
        )
        proxy.cut()  # the worker's database is gone: connections dropped, new ones refused
        time.sleep(4)
        during = row(sessions, job.id)  # (the test itself reaches the database directly)
        proxy.restore()
        done = wait_for(
            lambda: (r := row(sessions, job.id)).status.is_terminal() and r,
            180,
            "the job after the outage",
        )
    finally:
        celery.close()
        proxy.close()

    assert during.status == JobStatus.RUNNING
    assert done.status == JobStatus.SUCCEEDED and done.attempt == 1, done.error
    assert storage.exists(done.result_key or "")
    assert "database away" in workers.log()
