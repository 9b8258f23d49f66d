"""A signal to scale on (issue 15.7): /metrics' oneiro_workers_wanted follows the backlog, per
worker class: queued work over the measured per-worker speed and the target wait, never fewer
than the workers rendering now."""

from __future__ import annotations

import math

from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import create_app
from shared.cost import megapixel_steps, peak_memory_bytes
from shared.models import Job, JobStatus
from shared.params import RenderParams
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import authed_client, image_bytes, make_job, measured_worker


def wanted(client: FlaskClient) -> dict[tuple[str, str], float]:
    text = client.get("/metrics").get_data(as_text=True)
    return {
        (sample.labels["queue"], sample.labels["worker_class"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "oneiro_workers_wanted"
        for sample in family.samples
    }


def test_the_workers_wanted_follow_the_backlog(
    settings: Settings, session: Session, storage: Storage
) -> None:
    app = create_app(settings.model_copy(update={"target_wait_seconds": 1.0}))
    client = authed_client(app)
    queue = settings.queue
    assert wanted(client) == {(queue, ""): 0}
    make_job(session, storage)
    assert wanted(client) == {(queue, ""): 1}  # a backlog, no speed measured: one worker

    # Measured: a job in 0.5 s, so a worker renders two a second; target: wait at most 1 s.
    measured_worker(session, storage, 0.5)
    for _ in range(9):
        make_job(session, storage)
    assert wanted(client) == {(queue, ""): 5}  # 10 jobs, 2 a second a worker
    for _ in range(10):
        make_job(session, storage)
    assert wanted(client) == {(queue, ""): 10}

    # The backlog drains: three half-done renders left, yet never fewer than are rendering.
    queued = list(session.scalars(select(Job).where(Job.status == JobStatus.QUEUED)))
    for job in queued[3:]:
        job.status = JobStatus.CANCELED
    for job in queued[:3]:
        job.status, job.progress = JobStatus.RUNNING, {"fraction": 0.5}
    session.commit()
    assert wanted(client) == {(queue, ""): 3}
    app.extensions["oneiro"].engine.dispose()


def test_each_worker_class_has_its_own_count(
    settings: Settings, session: Session, storage: Storage
) -> None:
    small = peak_memory_bytes(96, 64, RenderParams(steps=2, octaves=2)) / 2**30
    farm = settings.model_copy(
        update={"worker_classes": f"gpu:{small + 0.001:.4f},large:80", "target_wait_seconds": 1.0}
    )
    app = create_app(farm)
    client = authed_client(app)
    measured_worker(session, storage, 0.5)
    for _ in range(4):
        make_job(session, storage)
    large = make_job(session, storage, image=image_bytes((900, 600)))
    counts = wanted(client)
    assert counts[(settings.queue, "gpu")] == 2
    # Its work at two small jobs' a second, in one second.
    each = megapixel_steps(96, 64, large.params)
    need = math.ceil(megapixel_steps(900, 600, large.params) / (2 * each))
    assert counts[(f"{settings.queue}-large", "large")] == need > 1
    app.extensions["oneiro"].engine.dispose()


def test_the_workers_wanted_count_every_frame_of_queued_and_running_frame_jobs(
    settings: Settings, session: Session, storage: Storage
) -> None:
    # Issue 23.5: a backlog of frame jobs wanted one worker, whatever its frames.
    app = create_app(settings.model_copy(update={"target_wait_seconds": 1.0}))
    client = authed_client(app)
    measured_worker(session, storage, 0.5)  # two stills' work a second a worker
    still = {"steps": 2, "octaves": 2, "seed": 7}
    animation = {**still, "animation": {"frames": 10}}
    make_job(session, storage, params=animation, kind="animation", frames=10)
    make_job(
        session,
        storage,
        params=animation,
        kind="animation",
        frames=10,
        status=JobStatus.RUNNING,
        progress={"fraction": 0.5},
    )

    # 10 frames queued and 5 left of the running one: 15 stills' work, 2 a second a worker.
    assert wanted(client) == {(settings.queue, ""): 8}
    app.extensions["oneiro"].engine.dispose()
