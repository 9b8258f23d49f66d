"""End to end: gunicorn serving the API, a real Celery worker process, Redis, SQLite/PostgreSQL."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.db import create_db_engine, create_session_factory
from shared.images import decode_rgb, fit_within
from shared.queue import RENDER_TASK, create_celery
from shared.storage import open_storage
from tests.utils import CHELSEA, Stack, make_job, postgres_database, running_stack, wait_for

pytestmark = pytest.mark.e2e

PARAMS = {"steps": 8, "octaves": 5, "max_dim": 128, "seed": 42}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[Stack]:
    """`alembic upgrade head`, then gunicorn and a Celery worker, as `make run` starts them."""
    tmp = tmp_path_factory.mktemp(f"e2e-{request.param}")
    databases = postgres_database() if request.param == "postgresql" else None
    try:
        with running_stack(tmp, redis_url, next(databases) if databases else None) as running:
            yield running
            sys.stdout.write(running.worker_log.read_text()[-3000:])
    finally:
        if databases:
            databases.close()


def submit(stack: Stack, params: dict[str, Any]) -> dict[str, Any]:
    import json

    with CHELSEA.open("rb") as image:
        response = stack.http().post(
            f"{stack.url}/v1/jobs",
            files={"image": ("chelsea.png", image, "image/png")},
            data={"params": json.dumps(params)},
            timeout=10,
        )
    assert response.status_code == 202, response.text
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    return response.json()  # type: ignore[no-any-return]


def poll_until_finished(stack: Stack, job_id: str, timeout: float = 180) -> tuple[dict, list]:
    """Poll the job until it ends; return its last state and every progress fraction seen."""
    fractions: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stack.http().get(f"{stack.url}/v1/jobs/{job_id}", timeout=5).json()
        fractions.append(job["progress"]["fraction"])
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job, fractions
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s: {job}")


def test_submit_poll_and_download_a_dream(stack: Stack) -> None:
    started = time.monotonic()
    job, fractions = poll_until_finished(stack, submit(stack, PARAMS)["id"])
    elapsed = time.monotonic() - started

    assert job["status"] == "succeeded", job
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    partial = sorted({f for f in fractions if 0 < f < 1})
    assert len(partial) >= 2, f"progress never rose through two values below 1: {fractions}"
    assert fractions == sorted(fractions) and fractions[-1] == 1.0

    response = stack.http().get(f"{stack.url}{job['result_url']}", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as result:
        assert result.format == "PNG" and result.size == (128, 85)
        dreamed = np.asarray(result.convert("RGB"), dtype=int)
    original = fit_within(decode_rgb(CHELSEA.read_bytes()), 128).astype(int)
    assert np.abs(dreamed - original).mean() > 1.0
    print(f"e2e render of a 128x85 image: {elapsed:.1f}s from submit to succeeded")


def test_a_message_delivered_three_times_renders_once(stack: Stack) -> None:
    job_id = submit(stack, {**PARAMS, "steps": 2})["id"]
    celery = create_celery(stack.settings)
    for _ in range(2):
        celery.send_task(RENDER_TASK, args=[job_id])
    celery.close()

    job, _ = poll_until_finished(stack, job_id)
    wait_for(
        lambda: len(stack.worker_lines(f"job {job_id} is not queued")) == 2,
        60,
        "the duplicate messages to be consumed",
    )

    assert job["status"] == "succeeded" and job["attempt"] == 1
    assert len(stack.worker_lines(f"job {job_id} attempt")) == 1


def test_a_failing_job_fails_readably_and_the_worker_goes_on(stack: Stack) -> None:
    engine = create_db_engine(stack.settings.database_url)
    storage = open_storage(stack.settings.storage_url)
    with create_session_factory(engine)() as session:
        broken = make_job(session, storage)
    engine.dispose()
    storage.delete(broken.input_key)
    celery = create_celery(stack.settings)
    celery.send_task(RENDER_TASK, args=[str(broken.id)])
    celery.close()
    next_id = submit(stack, {**PARAMS, "steps": 2})["id"]

    failed, _ = poll_until_finished(stack, str(broken.id))
    succeeded, _ = poll_until_finished(stack, next_id)

    assert failed["status"] == "failed"
    assert failed["error"] == (
        f"the input image of this job is missing from storage ({broken.input_key})"
    )
    assert succeeded["status"] == "succeeded"
