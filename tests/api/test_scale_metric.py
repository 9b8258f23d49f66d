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
from shared.estimates import Backlog, backlogs, expected_wait, wait_estimate, workers_wanted
from shared.models import Job, JobStatus
from shared.params import RenderParams
from shared.serializer import Throughput
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


def test_the_expected_wait_divides_the_work_by_every_measured_worker() -> None:
    assert expected_wait(600.0, Throughput(2.0, 3)) == 100.0
    assert expected_wait(600.0, Throughput(0.5, 1)) == 1200.0
    # Nothing measured, or no worker measured: no estimate, whatever the work.
    assert expected_wait(600.0, Throughput(None, 3)) is None
    assert expected_wait(600.0, Throughput(2.0, 0)) is None


def test_the_workers_wanted_render_the_backlog_within_the_target_and_keep_the_running() -> None:
    # 90 megapixel-steps at 0.5 a second a worker, within 30 s: 6 workers.
    assert workers_wanted(Backlog(90.0, 3, 0), 0.5, 30.0) == 6
    assert workers_wanted(Backlog(90.0, 3, 0), 3.0, 10.0) == 3
    # Never fewer than are rendering now; none for no work.
    assert workers_wanted(Backlog(1.0, 0, 4), 3.0, 10.0) == 4
    assert workers_wanted(Backlog(0.0, 0, 0), 3.0, 10.0) == 0
    # No speed measured (none, or a nonsense 0): one worker for any queued job, else none.
    for rate in (None, 0.0):
        assert workers_wanted(Backlog(90.0, 3, 0), rate, 30.0) == 1
        assert workers_wanted(Backlog(0.0, 0, 0), rate, 30.0) == 0
        assert workers_wanted(Backlog(9.0, 0, 2), rate, 30.0) == 2


def test_the_backlog_of_each_class_counts_its_own_jobs_and_what_running_ones_have_left(
    settings: Settings, session: Session, storage: Storage
) -> None:
    """Two classes: each queue's queued jobs and a quarter-done running job's rest; one class:
    the same sums from the database; no job at all: nothing, not a default."""
    small = peak_memory_bytes(96, 64, RenderParams(steps=2, octaves=2)) / 2**30
    two = settings.model_copy(update={"worker_classes": f"gpu:{small + 0.001:.4f},large:80"})
    assert {b.work for b in backlogs(session, two).values()} == {0.0}
    assert backlogs(session, settings)[settings.queue] == Backlog(0.0, 0, 0)
    queued = [make_job(session, storage) for _ in range(2)]
    large = make_job(session, storage, image=image_bytes((900, 600)))
    running = make_job(session, storage, status=JobStatus.RUNNING, progress={"fraction": 0.25})
    each, big = queued[0].work, large.work

    split = backlogs(session, two)
    assert split[settings.queue] == Backlog(2 * each + each * 0.75, 2, 1)
    assert split[f"{settings.queue}-large"] == Backlog(big, 1, 0)
    assert backlogs(session, settings)[settings.queue] == Backlog(
        2 * each + big + each * 0.75, 3, 1
    )
    assert running.work == each


def test_a_new_jobs_wait_estimate_gives_the_seconds_to_a_tenth_and_the_work_to_a_thousandth(
    settings: Settings, session: Session, storage: Storage
) -> None:
    job = make_job(session, storage, image=image_bytes((333, 211)))
    seconds, work = job.work / 0.7, job.work
    # Figures whose roundings differ, so that the test tells them apart.
    assert len({round(seconds, n) for n in (0, 1, 2)}) == 3
    assert len({round(work, n) for n in (2, 3, 4)}) == 3

    estimate = wait_estimate(session, settings, Throughput(0.7, 1))

    assert estimate["seconds"] == round(seconds, 1)
    assert estimate["work_ahead_megapixel_steps"] == round(work, 3)
    assert wait_estimate(session, settings, Throughput(None, 0))["seconds"] is None
