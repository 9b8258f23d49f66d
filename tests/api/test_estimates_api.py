"""POST /v1/estimates (issue 15.4): what POST /v1/jobs would make of a request, nothing stored;
a job no worker can hold is refused at submit, saying why."""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import create_app
from shared.cost import peak_memory_bytes, work
from shared.models import IdempotencyKey, Job, JobStatus
from shared.params import RenderParams
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import (
    assert_problem,
    authed_client,
    clip_bytes,
    image_bytes,
    make_job,
    measured_worker,
    queued_job_ids,
    stored_files,
    with_settings,
)
from worker.runtime import Runtime

PARAMS = {"steps": 2, "octaves": 2, "seed": 3}


def estimate(client: FlaskClient, size: tuple[int, int], params: Any, **headers: str) -> Any:
    return client.post(
        "/v1/estimates",
        data={"image": (io.BytesIO(image_bytes(size)), "a.png"), "params": json.dumps(params)},
        headers=headers,
    )


def submit(client: FlaskClient, size: tuple[int, int], params: Any) -> Any:
    return client.post(
        "/v1/jobs",
        data={"image": (io.BytesIO(image_bytes(size)), "a.png"), "params": json.dumps(params)},
    )


def counts(session: Session) -> tuple[int, int]:
    return (
        session.scalar(select(func.count()).select_from(Job)) or 0,
        session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0,
    )


def test_an_estimate_stores_nothing(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    answer = estimate(client, (120, 90), PARAMS, **{"Idempotency-Key": "once"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert counts(session) == (0, 0)
    assert stored_files(settings) == []
    assert queued_job_ids(settings) == []
    # The same key then submits as new: the estimate recorded no idempotency key.
    sent = client.post(
        "/v1/jobs",
        headers={"Idempotency-Key": "once"},
        data={"image": (io.BytesIO(image_bytes((120, 90))), "a.png"), "params": json.dumps(PARAMS)},
    )
    assert sent.status_code == 202


def test_an_estimate_agrees_with_the_jobs_stored_cost_and_the_workers_measured_work(
    client: FlaskClient,
    session: Session,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.engine import dream
    from worker.jobs import run_job

    params = {"steps": 2, "octaves": 3, "octave_scale": 1.4, "seed": 3, "tile_size": 64}
    told = estimate(client, (150, 100), params).get_json()
    job = submit(client, (150, 100), params).get_json()
    assert job["estimate"]["megapixel_steps"] == told["estimate"]["megapixel_steps"]
    assert told["memory"]["peak_bytes"] == peak_memory_bytes(
        150, 100, RenderParams.model_validate(params)
    )

    # What the engine renders: the pixels each tile batch owns, summed over every step.
    rendered = []
    advance = dream._Clock.advance

    def counted(self: Any, batch: list[Any], *rest: Any) -> Any:
        rendered.extend((t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) for t in batch)
        return advance(self, batch, *rest)

    monkeypatch.setattr(dream._Clock, "advance", counted)
    assert run_job(uuid.UUID(job["id"]), runtime) == JobStatus.SUCCEEDED
    assert sum(rendered) / 1e6 == pytest.approx(told["estimate"]["megapixel_steps"], abs=1e-3)


def test_an_estimate_predicts_render_time_and_wait_from_measured_throughput(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    # One worker measured at 0.5 s for its job, and three jobs queued ahead.
    each = work(96, 64, RenderParams(steps=2, octaves=2, seed=7)) / 1e6
    measured_worker(session, storage, 0.5)
    for _ in range(3):
        make_job(session, storage)
    told = estimate(client, (96, 64), {"steps": 2, "octaves": 2, "seed": 7}).get_json()
    rate = each / 0.5
    assert told["estimate"]["render_seconds"] == pytest.approx(each / rate, abs=0.1)
    assert told["wait"]["work_ahead_megapixel_steps"] == pytest.approx(3 * each, abs=1e-3)
    assert told["wait"]["seconds"] == pytest.approx(3 * each / rate, abs=0.1)
    assert "1 worker(s)" in told["wait"]["basis"]


def test_without_measurements_the_times_are_null_and_say_why(client: FlaskClient) -> None:
    told = estimate(client, (96, 64), PARAMS).get_json()
    assert told["estimate"]["render_seconds"] is None and told["wait"]["seconds"] is None
    assert "no worker has finished a job" in told["wait"]["basis"]


def test_an_estimate_is_refused_as_a_submission_is(client: FlaskClient, app: Any) -> None:
    body = assert_problem(estimate(client, (96, 64), {"steps": 0}), 422)
    assert body["errors"][0]["field"] == "params.steps"
    no_image = {"params": "{}"}
    assert_problem(
        client.post("/v1/estimates", data=no_image, content_type="multipart/form-data"), 422
    )
    anonymous = app.test_client()
    assert_problem(anonymous.post("/v1/estimates", data={}), 401)


def test_estimates_are_held_to_the_tenants_request_rate(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"rate_limit": "2/minute"}))
    client = authed_client(app)
    for _ in range(2):
        assert estimate(client, (96, 64), PARAMS).status_code == 200
    assert_problem(estimate(client, (96, 64), PARAMS), 429)
    app.extensions["oneiro"].engine.dispose()


def test_a_job_no_worker_class_can_hold_is_refused_at_submit_with_the_reason(
    settings: Settings, session: Session
) -> None:
    need = peak_memory_bytes(2000, 1500, RenderParams(**PARAMS)) / 2**30
    less = peak_memory_bytes(2000, 1500, RenderParams(**PARAMS, max_dim=500)) / 2**30
    classes = f"gpu:{less + 0.01:.3f},big:{need - 0.01:.3f}"
    small = settings.model_copy(update={"worker_classes": classes})
    app = create_app(small)
    client = authed_client(app)
    for route in ("/v1/jobs", "/v1/estimates"):
        answer = client.post(
            route,
            data={
                "image": (io.BytesIO(image_bytes((2000, 1500))), "a.png"),
                "params": json.dumps(PARAMS),
            },
        )
        body = assert_problem(answer, 422)
        assert body["errors"][0]["field"] == "params"
        message = body["errors"][0]["message"]
        assert f"about {need:.1f} GiB" in message and "'big'" in message
        assert "ONEIRO_WORKER_CLASSES" in message and "max_dim" in message
    assert counts(session) == (0, 0)
    # A smaller render of the same picture fits and goes through.
    fits = estimate(client, (2000, 1500), {**PARAMS, "max_dim": 500}).get_json()
    assert fits["memory"]["worker_class"] == "gpu"
    app.extensions["oneiro"].engine.dispose()


def test_with_one_class_the_workers_memory_setting_is_the_limit(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"worker_memory_gb": 0.5}))
    body = assert_problem(estimate(authed_client(app), (96, 64), PARAMS), 422)
    assert "ONEIRO_WORKER_MEMORY_GB" in body["detail"]
    app.extensions["oneiro"].engine.dispose()


def test_a_worker_fails_a_job_larger_than_it_holds_saying_why(
    session: Session, storage: Storage, runtime: Runtime
) -> None:
    from worker.jobs import run_job

    job = make_job(session, storage)
    small = with_settings(runtime, worker_memory_gb=0.5)
    assert run_job(job.id, small) == JobStatus.FAILED
    session.refresh(job)
    assert job.error and "this worker holds 0.5 GiB" in job.error


def test_an_estimate_counts_every_frame_and_agrees_with_the_submitted_job(
    client: FlaskClient,
) -> None:
    # Issue 23.5: an estimate of 100 frames answered the work of one.
    animation = {**PARAMS, "animation": {"frames": 100}}
    told = estimate(client, (96, 64), animation).get_json()
    job = submit(client, (96, 64), animation).get_json()

    one = work(96, 64, RenderParams.model_validate(PARAMS)) / 1e6
    assert told["estimate"]["megapixel_steps"] == pytest.approx(100 * one, abs=1e-3)
    assert job["estimate"]["megapixel_steps"] == told["estimate"]["megapixel_steps"]


def test_a_video_estimate_is_what_the_video_job_says(client: FlaskClient) -> None:
    def sent(route: str) -> Any:
        video = clip_bytes((64, 48), frames=5, audio=False)
        data = {"video": (io.BytesIO(video), "clip.mp4"), "params": json.dumps(PARAMS)}
        return client.post(route, data=data, content_type="multipart/form-data").get_json()

    told, job = sent("/v1/estimates"), sent("/v1/jobs")

    one = work(64, 48, RenderParams.model_validate({**PARAMS, "seed": 1})) / 1e6
    assert told["estimate"]["megapixel_steps"] == pytest.approx(5 * one, abs=1e-3)
    assert job["estimate"]["megapixel_steps"] == told["estimate"]["megapixel_steps"]


def test_an_estimate_past_the_soft_time_limit_warns(
    settings: Settings, session: Session, storage: Storage
) -> None:
    app = create_app(settings.model_copy(update={"soft_time_limit": 2.0}))
    client = authed_client(app)
    # A worker measured at one still (96x64, 2 steps, 2 octaves) in 0.5 s.
    measured_worker(session, storage, 0.5)
    short = estimate(client, (96, 64), {**PARAMS, "seed": 7}).get_json()
    assert short["warnings"] == []

    # 0.5 s a frame: 10 frames pass the 2 s limit.
    long = estimate(client, (96, 64), {**PARAMS, "animation": {"frames": 10}}).get_json()

    assert long["estimate"]["render_seconds"] == pytest.approx(5.0, abs=0.1)
    (warning,) = long["warnings"]
    assert "ONEIRO_SOFT_TIME_LIMIT" in warning and "fewer frames" in warning
    app.extensions["oneiro"].engine.dispose()
