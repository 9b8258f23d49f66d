"""The fair queue (issue 15.1-3): the backlog waits in the database and the dispatcher hands
Redis what free slots can start, in fair order; positions; start_by and max_run_seconds."""

from __future__ import annotations

import base64
import io
import json
import random
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.test import TestResponse

from shared.cost import megapixel_steps
from shared.dispatch import announce_slot, dispatch, slots_key
from shared.models import Job, JobStatus, utcnow
from shared.queue import create_celery, queue_keys
from shared.settings import Settings
from shared.standing import dispatch_order, queue_standings
from shared.storage import Storage, result_key
from shared.tenants import set_weight
from shared.transitions import claim_job
from tests.utils import (
    authed_client,
    clip_bytes,
    image_bytes,
    kill_process,
    maintenance_tasks,
    make_job,
    queued_job_ids,
    running_worker,
    stored_files,
    submit,
    tenant_named,
    wait_for,
    webhook_statuses,
    with_settings,
)
from worker.jobs import run_job
from worker.runtime import Runtime

TINY = {"steps": 1, "octaves": 1, "seed": 3}
# Workers that skip the engine (ONEIRO_DRY_RUN): the queue's order is what is tested here, and
# a render of milliseconds keeps a 22-job test to seconds. Short beats, so a killed worker's
# slot lapses quickly.
QUICK_WORKER = {"ONEIRO_DRY_RUN": "true", "ONEIRO_HEARTBEAT_INTERVAL": "1"}


def submit_as(client: FlaskClient, **params: object) -> uuid.UUID:
    response = submit(client, image_bytes((32, 32)), {**TINY, **params})
    assert response.status_code == 202, response.get_json()
    return uuid.UUID(response.get_json()["id"])


def start_order(session: Session, job_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    session.expire_all()
    jobs = session.scalars(select(Job).where(Job.id.in_(job_ids))).all()
    assert all(job.status == JobStatus.SUCCEEDED for job in jobs), [j.status for j in jobs]
    return [job.id for job in sorted(jobs, key=lambda job: job.started_at)]


def all_ended(session: Session, job_ids: list[uuid.UUID]) -> bool:
    session.expire_all()
    statuses = session.scalars(select(Job.status).where(Job.id.in_(job_ids))).all()
    return all(JobStatus(status).is_terminal() for status in statuses)


def position(client: FlaskClient, job_id: uuid.UUID) -> int:
    return int(client.get(f"/v1/jobs/{job_id}").get_json()["queue"]["position"])


@pytest.mark.e2e
def test_a_second_tenant_goes_before_the_first_ones_backlog_and_priority_orders_a_tenant(
    app: Flask, settings: Settings, session: Session, tmp_path: Path
) -> None:
    a, b = authed_client(app, "tenant-a"), authed_client(app, "tenant-b")
    jobs_a = [submit_as(a) for _ in range(18)]
    jobs_a.append(submit_as(a, priority="low"))
    jobs_a.append(submit_as(a, priority="high"))
    job_b = submit_as(b)
    # No worker yet: the look-ahead sent A's first job; B's comes next, before A's backlog.
    assert queued_job_ids(settings) == [str(jobs_a[0])]
    assert position(b, job_b) == 2
    assert position(a, jobs_a[-1]) == 3  # high priority: first of A's backlog

    # The slot a worker announces, dispatched for here while A's first job is still in flight:
    # had the worker's own first dispatch come after it rendered that job (a dry run takes
    # milliseconds), both tenants would have had nothing in flight, their shares tied and A's
    # older high-priority job rightly gone first (1 run in about 40 under load).
    announce_slot(settings, "w:first", slots=1)
    dispatch(session, create_celery(settings), settings)
    assert queued_job_ids(settings) == [str(job_b), str(jobs_a[0])]  # the list's head: newest
    with running_worker(settings, tmp_path / "worker.log", env=QUICK_WORKER):
        wait_for(lambda: all_ended(session, [*jobs_a, job_b]), 90, "the jobs to end")

    expected = [jobs_a[0], job_b, jobs_a[19], *jobs_a[1:18], jobs_a[18]]
    assert start_order(session, [*jobs_a, job_b]) == expected
    assert all(job.attempt == 1 for job in session.scalars(select(Job)))


def test_weights_share_a_two_slot_farm_in_proportion(
    app: Flask, settings: Settings, session: Session
) -> None:
    light, heavy = authed_client(app, "light"), authed_client(app, "heavy")
    set_weight(session, "heavy", 2)
    # The light tenant submits first: where the shares tie, its older jobs go first, so the
    # heavy tenant's lead comes from its weight alone (equal weights give it at most 6 of 12).
    jobs_light = [submit_as(light) for _ in range(12)]
    jobs_heavy = [submit_as(heavy) for _ in range(12)]

    # A worker of two slots played by the test, one step at a time, so no timing decides the
    # order: it takes the oldest message Redis holds while a slot is free, then its oldest
    # render ends, and each end dispatches, as a worker's does.
    celery = create_celery(settings)
    started: list[uuid.UUID] = []
    running: list[uuid.UUID] = []
    with redis.Redis.from_url(settings.redis_url) as client_redis:
        while len(started) < 12:
            announce_slot(settings, "w:1", slots=2)
            dispatch(session, celery, settings)
            while len(running) < 2:
                message = client_redis.rpop(settings.queue)  # kombu's consumer end
                assert message is not None, "a free slot and nothing dispatched to it"
                job_id = uuid.UUID(json.loads(base64.b64decode(json.loads(message)["body"]))[0][0])
                assert claim_job(session, job_id, "w:1") == 1
                session.commit()
                started.append(job_id)
                running.append(job_id)
            done = session.get_one(Job, running.pop(0))
            done.status, done.finished_at = JobStatus.SUCCEEDED, utcnow()
            session.commit()
    celery.close()

    first = started[:12]
    # Weight 2 against 1: two of every three starts while both wait (equal weights: 6 or fewer).
    assert len(set(first) & set(jobs_heavy)) == 8
    assert set(first) <= {*jobs_heavy, *jobs_light}


def test_positions_count_down_as_jobs_start(
    client: FlaskClient, settings: Settings, session: Session
) -> None:
    jobs = [submit_as(client) for _ in range(4)]
    assert [position(client, job_id) for job_id in jobs] == [1, 2, 3, 4]
    # No measured speed yet: no estimate, said as null rather than guessed.
    assert client.get(f"/v1/jobs/{jobs[3]}").get_json()["queue"]["estimated_start_seconds"] is None

    with session.begin():
        assert claim_job(session, jobs[0], "w:1") == 1

    assert client.get(f"/v1/jobs/{jobs[0]}").get_json()["queue"] is None  # running now
    assert [position(client, job_id) for job_id in jobs[1:]] == [1, 2, 3]


def one_worker_at_one_megapixel_step_a_second(
    client: FlaskClient, settings: Settings, session: Session
) -> float:
    """A worker measured at 1 megapixel-step per second (a first-attempt job it finished),
    its slot announced; the work of that job (a still of submit_as's)."""
    done = session.get_one(Job, submit_as(client))
    work = megapixel_steps(done.input_width, done.input_height, done.params)
    done.status, done.worker, done.attempt = JobStatus.SUCCEEDED, "w:1", 1
    done.finished_at = utcnow()
    done.started_at = done.finished_at - timedelta(seconds=work)
    session.commit()
    client.application.extensions.pop("oneiro.throughput", None)  # measured again now
    announce_slot(settings, "w:1")
    return work


def test_the_start_estimate_is_the_work_ahead_over_the_farms_speed(
    client: FlaskClient, settings: Settings, session: Session
) -> None:
    work = one_worker_at_one_megapixel_step_a_second(client, settings, session)
    first, second = submit_as(client), submit_as(client)

    shown = client.get(f"/v1/jobs/{second}").get_json()

    assert shown["queue"]["position"] == 2
    # The work of `first`, ahead of it, at 1 megapixel-step per second on one slot.
    assert shown["queue"]["estimated_start_seconds"] == pytest.approx(work, abs=0.1)
    assert client.get(f"/v1/jobs/{first}").get_json()["queue"]["estimated_start_seconds"] == 0


def submit_clip(client: FlaskClient) -> TestResponse:
    """A 3-frame 32x32 video job at TINY params, accepted."""
    answer = client.post(
        "/v1/jobs",
        data={
            "video": (io.BytesIO(clip_bytes((32, 32), frames=3, audio=False)), "clip.mp4"),
            "params": json.dumps(TINY),
        },
        content_type="multipart/form-data",
    )
    assert answer.status_code == 202, answer.get_json()
    return answer


def test_a_video_ahead_counts_every_frame_in_the_start_estimate(
    client: FlaskClient, settings: Settings, session: Session
) -> None:
    one_worker_at_one_megapixel_step_a_second(client, settings, session)
    # A video's frame count is the job's (read from the upload), not in its params.
    answer = submit_clip(client)
    video = session.get_one(Job, uuid.UUID(answer.get_json()["id"]))
    behind = submit_as(client)

    shown = client.get(f"/v1/jobs/{behind}").get_json()

    one = megapixel_steps(video.input_width, video.input_height, video.params)
    assert video.frames == 3
    assert shown["queue"]["estimated_start_seconds"] == pytest.approx(3 * one, abs=0.1)


def test_a_running_video_counts_every_frame_it_has_left_in_the_start_estimate(
    client: FlaskClient, app: Flask, settings: Settings, session: Session
) -> None:
    # Issue 23.5: while a frame job ran, another tenant's job was told it starts when one
    # frame's work is done.
    one_worker_at_one_megapixel_step_a_second(client, settings, session)
    answer = submit_clip(client)
    video_id = uuid.UUID(answer.get_json()["id"])
    assert claim_job(session, video_id, "w:1") == 1
    video = session.get_one(Job, video_id)
    video.progress = {"fraction": 1 / 3}  # one frame of three rendered
    session.commit()
    other = authed_client(app, "another-tenant")
    behind = submit_as(other)

    shown = other.get(f"/v1/jobs/{behind}").get_json()

    one = megapixel_steps(video.input_width, video.input_height, video.params)
    assert shown["queue"]["estimated_start_seconds"] == pytest.approx(2 * one, abs=0.1)


def test_priority_never_orders_one_tenant_against_another(
    session: Session, storage: Storage
) -> None:
    # Issue 23.13: at equal shares a newer high-priority job of one tenant went before an
    # older normal one of another; README: priority never orders tenants.
    a, b = tenant_named(session, "tenant-a"), tenant_named(session, "tenant-b")
    older = make_job(session, storage, tenant_id=a.id, priority=1)
    newer_high = make_job(session, storage, tenant_id=b.id, priority=0)
    a_low = make_job(session, storage, tenant_id=a.id, priority=2)
    a_high = make_job(session, storage, tenant_id=a.id, priority=0)

    # Tenant a's own jobs by priority: a_high, older, a_low. Between the tenants, equal
    # shares go oldest first: b's one job (older than a_high) first, then a's in turn.
    assert dispatch_order(session) == [newer_high.id, a_high.id, older.id, a_low.id]
    # Alone, each tenant's first: the older normal job goes before the newer high one.
    session.delete(a_high)
    session.commit()
    assert dispatch_order(session) == [older.id, newer_high.id, a_low.id]
    assert [
        queue_standings(session, [job.id], None, 0)[job.id]["position"]
        for job in (older, newer_high, a_low)
    ] == [1, 2, 3]


def test_each_standing_is_its_place_and_the_work_before_it_in_dispatch_order(
    session: Session, storage: Storage
) -> None:
    # The one-query standing against the dispatcher's own order read whole: tenants of
    # weights 1 to 3, some with work in flight, mixed priorities, stills and animations.
    rng = random.Random(23)
    tenants = [tenant_named(session, f"tenant-{n}") for n in range(4)]
    for n, tenant in enumerate(tenants):
        set_weight(session, tenant.name, 1.0 + n % 3)
    session.commit()
    jobs = []
    for n in range(40):
        frames = rng.choice([None, 2, 5])
        params = {"steps": rng.randint(1, 4), "octaves": 1, "seed": n}
        if frames:
            params["animation"] = {"frames": frames}
        status = JobStatus.RUNNING if n % 9 == 0 else JobStatus.QUEUED
        jobs.append(
            make_job(
                session,
                storage,
                tenant_id=rng.choice(tenants).id,
                priority=rng.randint(0, 2),
                params=params,
                kind="animation" if frames else "image",
                frames=frames,
                status=status,
                progress={"fraction": 0.25} if status == JobStatus.RUNNING else {},
            )
        )
    running_left = sum(0.75 * job.work for job in jobs if job.status == JobStatus.RUNNING)
    assert all(job.work > 0 for job in jobs)

    order = dispatch_order(session)
    standings = queue_standings(session, order, 1.0, 1)

    works = {job.id: job.work for job in jobs}
    ahead = running_left
    for n, job_id in enumerate(order, 1):
        assert standings[job_id]["position"] == n
        assert standings[job_id]["estimated_start_seconds"] == pytest.approx(ahead, abs=0.06)
        ahead += works[job_id]


def test_a_job_not_started_by_start_by_expires(
    client: FlaskClient,
    settings: Settings,
    session: Session,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = submit_as(client)  # takes the one look-ahead message; no worker ever comes
    late = submit_as(client, start_by=1)
    assert queued_job_ids(settings) == [str(blocker)]
    time.sleep(1.2)

    maintenance_tasks(monkeypatch, runtime).maintain()

    shown = client.get(f"/v1/jobs/{late}").get_json()
    assert shown["status"] == "expired" and "start_by" in shown["error"]
    assert shown["queue"] is None and shown["finished_at"] is not None
    assert client.get("/v1/jobs?status=expired").get_json()["jobs"][0]["id"] == str(late)
    # Terminal: nothing to cancel; a retry queues it again, with no deadline.
    assert client.post(f"/v1/jobs/{late}/cancel").status_code == 409
    assert client.post(f"/v1/jobs/{late}/retry").status_code == 202


def test_a_start_by_that_has_passed_is_refused(client: FlaskClient, session: Session) -> None:
    response = submit(client, image_bytes((32, 32)), {**TINY, "start_by": "2020-01-01T00:00:00Z"})
    assert response.status_code == 422
    assert response.get_json()["errors"][0]["field"] == "params.start_by"
    assert session.scalar(select(Job.id)) is None


def test_max_run_seconds_cancels_a_long_render_with_its_reason(
    client: FlaskClient, settings: Settings, session: Session, storage: Storage, runtime: Runtime
) -> None:
    job = make_job(
        session,
        storage,
        image=image_bytes((64, 64)),
        params={"steps": 1000, "octaves": 1, "seed": 3, "max_run_seconds": 1},
        webhook_url="https://hooks.example.com/x",
        webhook_events=["completed"],
    )

    started = time.monotonic()
    assert run_job(job.id, runtime) is None  # the render stopped: not this attempt's any more
    assert time.monotonic() - started < 60

    shown = client.get(f"/v1/jobs/{job.id}").get_json()
    assert shown["status"] == "canceled" and "max_run_seconds" in shown["error"]
    assert webhook_statuses(settings) == [("canceled", shown["error"])]


@pytest.mark.parametrize("kind", ["animation", "video"])
def test_max_run_seconds_cancels_a_long_animation_or_video_too(
    client: FlaskClient, session: Session, runtime: Runtime, kind: str
) -> None:
    # Frames of 1,000 steps: a frame alone takes far longer than the limit, so only the
    # limit can stop the job within the test's time.
    slow = {"steps": 1000, "octaves": 1, "seed": 3, "max_run_seconds": 1}
    if kind == "animation":
        response = submit(client, image_bytes((64, 64)), {**slow, "animation": {"frames": 50}})
    else:
        video = (io.BytesIO(clip_bytes((64, 64), frames=8, audio=False)), "clip.mp4")
        response = submit(client, None, slow, video=video)
    assert response.status_code == 202, response.get_data(as_text=True)
    job_id = uuid.UUID(response.get_json()["id"])

    started = time.monotonic()
    assert run_job(job_id, runtime) is None  # stopped: not this attempt's any more
    assert time.monotonic() - started < 60

    shown = client.get(f"/v1/jobs/{job_id}").get_json()
    assert shown["kind"] == kind
    assert shown["status"] == "canceled" and "max_run_seconds" in shown["error"]


@pytest.mark.e2e
def test_a_killed_worker_and_a_lost_queue_lose_nothing_and_run_nothing_twice(
    app: Flask,
    settings: Settings,
    session: Session,
    runtime: Runtime,
    storage: Storage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = authed_client(app)
    jobs = [submit_as(client) for _ in range(8)]
    # Redis loses what it held (a flush, a restart without persistence): the dispatched job's
    # message, and the announcements.
    with redis.Redis.from_url(settings.redis_url) as client_redis:
        client_redis.delete(*queue_keys(settings.queue), slots_key(settings))
    # A lease of a few beats (1 s each): short, yet no render of a loaded machine outlives it.
    quick = with_settings(runtime, relay_after=0.5, lease_seconds=5.0)
    time.sleep(0.6)
    maintenance_tasks(monkeypatch, quick).maintain()  # the relay puts it back in the backlog

    log = tmp_path / "worker.log"
    with running_worker(settings, log, env=QUICK_WORKER) as worker:
        wait_for(
            lambda: sum(s == JobStatus.SUCCEEDED for s in statuses(session, jobs)) >= 3,
            60,
            "three jobs to succeed",
        )
        kill_process(worker)
    with running_worker(settings, log, env=QUICK_WORKER):

        def repaired() -> bool:
            time.sleep(0.5)
            maintenance_tasks(monkeypatch, quick).maintain()
            return all_ended(session, jobs)

        wait_for(repaired, 90, "every job to end")

    assert statuses(session, jobs) == [JobStatus.SUCCEEDED] * len(jobs)
    # Counted from the rows and the stored files, not the log: a worker killed just after
    # committing a success never logs it. Each attempt stores its result under its own
    # number: one result a job, and one more at most, of the attempt killed mid-render.
    session.expire_all()
    done = session.scalars(select(Job).where(Job.id.in_(jobs))).all()
    for job in done:
        assert job.result_key == result_key(job.id, job.attempt) and storage.exists(job.result_key)
    results = [path for path in stored_files(settings) if path.name.startswith("result.")]
    assert len(results) <= len(jobs) + 1, results
    # At most the one killed mid-render was claimed again.
    assert sum(job.attempt for job in done) <= len(jobs) + 1


def statuses(session: Session, job_ids: list[uuid.UUID]) -> list[JobStatus]:
    session.expire_all()
    by_id = dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())
    return [JobStatus(by_id[job_id]) for job_id in job_ids]


def test_dispatch_sends_only_what_free_slots_and_the_look_ahead_can_start(
    settings: Settings, session: Session, client: FlaskClient
) -> None:
    jobs = [submit_as(client) for _ in range(5)]
    assert queued_job_ids(settings) == [str(jobs[0])]  # no worker: the look-ahead only
    announce_slot(settings, "w:1")
    announce_slot(settings, "w:2")
    celery = create_celery(settings)
    sent = dispatch(session, celery, settings).sent
    assert sent == jobs[1:3]  # two slots, one look-ahead: three in flight
    assert dispatch(session, celery, settings).sent == []
    celery.close()
    assert tenant_named(session).weight == 1
