"""The HTTP API against a real database (SQLite and PostgreSQL) and a real Redis."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import create_app
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import (
    CHELSEA,
    Proxy,
    assert_problem,
    authed_client,
    image_bytes,
    make_job,
    queued_job_ids,
    stored_files,
    submit,
)


def test_submit_stores_commits_and_enqueues(
    client: FlaskClient, session: Session, settings: Settings, storage: Storage
) -> None:
    response = submit(client, CHELSEA.read_bytes(), {"steps": 3, "max_dim": 128, "seed": 5})

    assert response.status_code == 202
    body = response.get_json()
    job_id = uuid.UUID(body["id"])
    assert job_id.version == 4
    assert response.headers["Location"] == f"/v1/jobs/{job_id}"
    assert body["status"] == "queued"
    assert body["params"] == {
        "model": "inception_v3",
        "layers": {"mixed3": 1.0, "mixed5": 1.0},
        "channels": None,
        "steps": 3,
        "step_size": 0.01,
        "octaves": 5,
        "octave_scale": 1.3,
        "grad_norm": "std",
        "detail": True,
        "tile_size": 512,
        "tv_weight": 0.0,
        "preserve_colors": False,
        "max_loss": None,
        "seed": 5,
        "max_dim": 128,
        "guide_weight": 1.0,
        "mask_layers": None,
        "preset": None,
        "output_format": "png",
        "quality": 90,
        "animation": None,
        "blend": 0.8,
        "priority": "normal",
        "start_by": None,
        "max_run_seconds": None,
    }
    assert body["input"] == {"width": 451, "height": 300}
    assert body["progress"]["fraction"] == 0.0
    assert body["result_url"] is None

    job = session.get_one(Job, job_id)
    assert job.status == JobStatus.QUEUED
    assert storage.get(job.input_key) == CHELSEA.read_bytes()
    assert queued_job_ids(settings) == [str(job_id)]
    assert job.enqueued_at is not None  # sent: the relay leaves it alone for relay_after


def test_submit_resolves_a_seed_when_none_is_given(client: FlaskClient) -> None:
    first = submit(client, image_bytes()).get_json()["params"]["seed"]
    second = submit(client, image_bytes()).get_json()["params"]["seed"]
    assert isinstance(first, int) and isinstance(second, int) and first != second


def test_max_loss_is_recorded_and_the_job_costs_its_full_steps(
    client: FlaskClient, session: Session
) -> None:
    # The octave may stop early, but that is only known once rendering: the price is the same.
    plain = submit(client, image_bytes(), {"steps": 6, "seed": 1}).get_json()
    stopping = submit(client, image_bytes(), {"steps": 6, "seed": 1, "max_loss": 0.5}).get_json()
    assert stopping["params"]["max_loss"] == 0.5 and plain["params"]["max_loss"] is None
    jobs = [session.get_one(Job, uuid.UUID(body["id"])) for body in (plain, stopping)]
    assert jobs[0].work == jobs[1].work > 0
    assert jobs[1].params["max_loss"] == 0.5  # and so the result's recipe carries it


def test_params_may_come_as_a_json_file_part(client: FlaskClient) -> None:
    params = (io.BytesIO(b'{"steps": 4}'), "params.json", "application/json")
    response = client.post(
        "/v1/jobs", data={"image": (io.BytesIO(image_bytes()), "a.png"), "params": params}
    )
    assert response.status_code == 202
    assert response.get_json()["params"]["steps"] == 4


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepts_jpeg_png_webp(client: FlaskClient, fmt: str) -> None:
    response = submit(client, image_bytes((80, 60), fmt))
    assert response.status_code == 202
    assert response.get_json()["input"] == {"width": 80, "height": 60}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"steps": 0}, "params.steps"),
        ({"steps": 5000}, "params.steps"),
        ({"steps": "5"}, "params.steps"),
        ({"step_size": -1}, "params.step_size"),
        ({"octaves": 0}, "params.octaves"),
        ({"octave_scale": 0.5}, "params.octave_scale"),
        ({"layers": ["mixed3", "fc1000"]}, "params.layers"),
        ({"layers": []}, "params.layers"),
        ({"seed": -3}, "params.seed"),
        ({"max_dim": 4}, "params.max_dim"),
        ({"colour": "blue"}, "params.colour"),
        ({"model": "alexnet"}, "params.model"),
        ({"model": "vgg19", "layers": ["mixed3"]}, "params.layers"),
        ({"layers": {"mixed3": -1}}, "params.layers.mixed3"),
        ({"channels": {"mixed3": [768]}}, "params.channels"),
        ({"channels": {"mixed4": [1]}}, "params.channels"),
        ({"grad_norm": "l2"}, "params.grad_norm"),
        ({"detail": "yes"}, "params.detail"),
        ({"tv_weight": -0.1}, "params.tv_weight"),
        ({"max_loss": "lots"}, "params.max_loss"),
        ({"tile_size": 32}, "params.tile_size"),
        ("{not json", "params"),
        ("[1, 2]", "params"),
    ],
)
def test_bad_params_are_422_naming_the_field_and_change_nothing(
    client: FlaskClient, session: Session, settings: Settings, params: Any, field: str
) -> None:
    body = assert_problem(submit(client, image_bytes(), params), 422)

    assert field in [error["field"] for error in body["errors"]]
    assert field in body["detail"]
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []
    assert queued_job_ids(settings) == []


@pytest.mark.parametrize(
    ("image", "words"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "the file is not an image Oneiro can read"),
        (image_bytes((200, 200), "JPEG")[:300], "not a readable image"),
        (image_bytes((40, 40), "GIF", "P"), "unsupported image format GIF"),
        (None, "required"),
    ],
    ids=["empty", "text", "truncated", "gif", "missing"],
)
def test_bad_images_are_422_and_change_nothing(
    client: FlaskClient, session: Session, settings: Settings, image: bytes | None, words: str
) -> None:
    body = assert_problem(submit(client, image), 422)

    assert body["errors"][0]["field"] == "image"
    assert words in body["detail"]
    assert "<_io" not in body["detail"] and "0x" not in body["detail"]
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []
    assert queued_job_ids(settings) == []


@pytest.mark.parametrize(
    ("params", "field", "hint"),
    [
        ({"stepz": 10}, "params.stepz", "did you mean `steps`?"),
        ({"octave_scal": 1.4}, "params.octave_scal", "did you mean `octave_scale`?"),
        ({"animation": {"frame": 4}}, "params.animation.frame", "did you mean `frames`?"),
        ({"colour": "blue"}, "params.colour", "not a parameter"),
    ],
)
def test_a_misspelt_param_is_422_suggesting_the_name(
    client: FlaskClient, params: dict[str, Any], field: str, hint: str
) -> None:
    body = assert_problem(submit(client, image_bytes(), params), 422)
    [error] = [error for error in body["errors"] if error["field"] == field]
    assert hint in error["message"]


def test_unknown_form_parts_are_422(client: FlaskClient) -> None:
    body = assert_problem(submit(client, image_bytes(), None, colour="blue"), 422)
    assert body["errors"][0]["field"] == "colour"


def test_unnamed_form_parts_are_422_not_500(client: FlaskClient) -> None:
    # Found by the fuzzer: a part named "" beside one with no name made sorting the names fail.
    boundary = "oneiro-test-boundary"
    parts = [
        'Content-Disposition: form-data; name=""\r\n\r\n{}',
        "Content-Disposition: form-data\r\n\r\nx",
        'Content-Disposition: form-data; name="colour"\r\n\r\nblue',
    ]
    body = "".join(f"--{boundary}\r\n{part}\r\n" for part in parts) + f"--{boundary}--\r\n"
    response = client.post(
        "/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    fields = [error["field"] for error in assert_problem(response, 422)["errors"]]
    assert sorted(fields) == ["(unnamed part)", "colour"]


def test_non_multipart_is_415(client: FlaskClient) -> None:
    assert_problem(client.post("/v1/jobs", json={"steps": 3}), 415)


def test_upload_over_the_limit_is_413(client: FlaskClient, settings: Settings) -> None:
    # A raw body: the test client would otherwise spool the upload to a file of its own.
    boundary = "oneiro-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    ).encode() + b"\0" * (settings.max_upload_bytes + 128 * 1024)
    response = client.post(
        "/v1/jobs", data=body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    body = assert_problem(response, 413)
    assert str(settings.max_upload_bytes) in body["detail"]
    assert "ONEIRO_MAX_UPLOAD_BYTES" in body["detail"]  # the setting, as a 422 names its own


def test_status_of_unknown_and_malformed_ids_is_404(client: FlaskClient) -> None:
    body = assert_problem(client.get(f"/v1/jobs/{uuid.uuid4()}"), 404)
    assert "no job" in body["detail"]
    # The API's own 404, not Flask's "The requested URL was not found on the server".
    for path in ("/v1/jobs/not-a-uuid", "/v1/jobs/not-a-uuid/preview"):
        body = assert_problem(client.get(path), 404)
        assert body["title"] == "Job not found"
        assert body["detail"] == "there is no job not-a-uuid; job ids are UUIDs"


def test_layers_may_be_one_name(client: FlaskClient) -> None:
    for layers, resolved in [
        ("mixed4", {"mixed4": 1.0}),
        ("mixed3, mixed5", {"mixed3": 1.0, "mixed5": 1.0}),
    ]:
        response = submit(client, image_bytes(), {"layers": layers, "steps": 2})
        assert response.status_code == 202, response.get_data(as_text=True)
        assert response.get_json()["params"]["layers"] == resolved
    body = assert_problem(submit(client, image_bytes(), {"layers": "mixed99"}), 422)
    assert body["errors"][0]["field"] == "params.layers"


def test_preview_of_a_job_that_ended_without_one_says_so(
    app: Flask, session: Session, storage: Storage
) -> None:
    http = authed_client(app)
    for status in (JobStatus.FAILED, JobStatus.CANCELED):
        job = make_job(session, storage, status=status)
        body = assert_problem(http.get(f"/v1/jobs/{job.id}/preview"), 409)
        assert "before its first step" in body["detail"]
        assert "writes one" not in body["detail"]
    running = make_job(session, storage, status=JobStatus.RUNNING)
    body = assert_problem(http.get(f"/v1/jobs/{running.id}/preview"), 409)
    assert "writes one after the first step" in body["detail"]


def test_status_reports_progress_and_timestamps(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    job = make_job(
        session,
        storage,
        status=JobStatus.RUNNING,
        attempt=1,
        progress={"fraction": 0.25, "octave": 1, "octaves": 2, "step": 1, "steps": 2},
    )

    body = client.get(f"/v1/jobs/{job.id}").get_json()

    assert body["status"] == "running"
    assert body["progress"]["fraction"] == 0.25
    assert body["progress"]["octave"] == 1 and body["progress"]["steps"] == 2
    assert body["created_at"].endswith("Z")
    assert body["error"] is None and body["result_url"] is None


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED])
def test_result_is_409_until_succeeded(
    client: FlaskClient, session: Session, storage: Storage, status: JobStatus
) -> None:
    job = make_job(session, storage, status=status, error="boom" if status == "failed" else None)
    body = assert_problem(client.get(f"/v1/jobs/{job.id}/result"), 409)
    assert body["job_status"] == status.value


def test_result_of_a_succeeded_job_is_its_png(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    png = image_bytes((30, 20))
    storage.put("results/x.png", png)
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, result_key="results/x.png")

    status = client.get(f"/v1/jobs/{job.id}").get_json()
    response = client.get(status["result_url"])

    assert response.status_code == 200
    assert response.content_type == "image/png"
    assert response.data == png


def test_submit_with_redis_down_still_records_the_job(
    app_without_redis: FlaskClient, session: Session
) -> None:
    response = submit(app_without_redis, image_bytes())
    assert response.status_code == 202
    # Committed before the enqueue failed, and marked unsent: the relay's next round sends it.
    job = session.get_one(Job, uuid.UUID(response.get_json()["id"]))
    assert job.status == JobStatus.QUEUED and job.enqueued_at is None


@pytest.fixture
def app_without_redis(settings: Settings, dead_port: int) -> Iterator[FlaskClient]:
    dead = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead_port}/0"})
    app = create_app(dead)
    yield authed_client(app)
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "database": "ok", "redis": "ok"}


def test_readiness_with_only_redis_down_is_503_naming_redis(
    app_without_redis: FlaskClient,
) -> None:
    ready = app_without_redis.get("/readyz")

    assert ready.status_code == 503
    assert ready.get_json() == {"status": "unavailable", "database": "ok", "redis": "unavailable"}
    assert app_without_redis.get("/healthz").status_code == 200  # the process itself is up


def test_a_database_that_is_down_is_a_503_not_a_500_or_a_hang(
    settings: Settings, dead_port: int
) -> None:
    down = settings.model_copy(
        update={
            "database_url": f"postgresql+psycopg://postgres@127.0.0.1:{dead_port}/oneiro",
            "redis_url": f"redis://127.0.0.1:{dead_port}/0",
        }
    )
    app = create_app(down)
    client = app.test_client()
    # A key that cannot be checked while the database is away: 503, not 401.
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer oneiro_unverifiable"

    status = client.get(f"/v1/jobs/{uuid.uuid4()}")
    submitted = submit(client, image_bytes())
    ready = client.get("/readyz")

    for response in (status, submitted):
        body = assert_problem(response, 503)
        assert "database" in body["detail"] and response.headers["Retry-After"] == "5"
    assert ready.status_code == 503
    assert ready.get_json()["database"].startswith("unavailable")
    assert ready.get_json()["redis"] == "unavailable"
    assert stored_files(down) == []
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_submit_stores_the_input_in_s3_when_configured(
    settings: Settings, session: Session, s3_url: str
) -> None:
    from shared.storage import open_storage

    app = create_app(settings.model_copy(update={"storage_url": s3_url}))
    response = submit(authed_client(app), image_bytes())
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()

    assert response.status_code == 202
    job = session.get_one(Job, uuid.UUID(response.get_json()["id"]))
    assert open_storage(s3_url).get(job.input_key) == image_bytes()


def test_the_api_comes_back_by_itself_after_the_database_restarts(
    settings: Settings, database_url: str
) -> None:
    """The API keeps no pre-ping (a round trip per request): after the database went away, a
    request on a dead pooled connection may answer 503, and the next one is served."""
    url = sa.engine.make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("SQLite is a file, not a server that can go away")
    proxy = Proxy((url.host or "127.0.0.1", url.port or 5432))
    through = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    app = create_app(settings.model_copy(update={"database_url": through}))
    client = authed_client(app)
    try:
        assert client.get("/v1/jobs").status_code == 200
        proxy.cut()  # every pooled connection dies, as in a restart
        assert_problem(client.get("/v1/jobs"), 503)
        proxy.restore()
        answers = [client.get("/v1/jobs").status_code for _ in range(3)]
        assert answers[-2:] == [200, 200] and set(answers) <= {200, 503}
    finally:
        proxy.close()
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()


def test_an_ended_jobs_progress_is_final(app: Flask, session: Session, storage: Storage) -> None:
    last_report = {
        "fraction": 0.8,
        "octave": 2,
        "octaves": 2,
        "step": 8,
        "steps": 10,
        "tiles_done": 66,
        "tiles": 70,
        "eta_seconds": 681.2,
    }
    params = {"steps": 10, "octaves": 2, "seed": 3}
    done = make_job(
        session, storage, status=JobStatus.SUCCEEDED, progress=last_report, params=params
    )
    canceled = make_job(
        session, storage, status=JobStatus.CANCELED, progress=last_report, params=params
    )
    failed = make_job(session, storage, status=JobStatus.FAILED, progress=last_report)
    running = make_job(session, storage, status=JobStatus.RUNNING, progress=last_report)
    queued = make_job(session, storage, params=params)
    http = authed_client(app)

    def progress(job: Job) -> dict[str, Any]:
        return http.get(f"/v1/jobs/{job.id}").get_json()["progress"]  # type: ignore[no-any-return]

    assert progress(done) == {
        **last_report,
        "fraction": 1.0,
        "step": 10,
        "tiles_done": 70,
        "eta_seconds": 0.0,
    }
    assert progress(canceled)["eta_seconds"] is None
    assert progress(failed)["eta_seconds"] is None
    assert progress(running) == last_report
    # Octaves count from 1: a job not started is at octave 1 of 2, step 0.
    assert progress(queued)["octave"] == 1 and progress(queued)["step"] == 0
    # Canceling a running job through the API drops its ETA too.
    assert http.post(f"/v1/jobs/{running.id}/cancel").get_json()["progress"]["eta_seconds"] is None
