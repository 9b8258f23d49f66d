"""Cancel, retry and list, through the API, with the job runner in-process."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import (
    assert_problem,
    before_each_gradient,
    image_bytes,
    make_job,
    queued_job_ids,
    submit,
    with_settings,
)
from worker.jobs import run_job
from worker.runtime import Runtime


def status_of(session: Session, job_id: Any) -> Job:
    session.expire_all()
    return session.get_one(Job, uuid.UUID(str(job_id)))


def test_a_queued_job_is_canceled_at_once_and_never_runs(
    client: FlaskClient, session: Session, runtime: Runtime
) -> None:
    job_id = submit(client, image_bytes()).get_json()["id"]

    response = client.post(f"/v1/jobs/{job_id}/cancel")

    assert response.status_code == 200 and response.get_json()["status"] == "canceled"
    assert run_job(uuid.UUID(job_id), runtime) is None  # its message arrives: nothing happens
    assert status_of(session, job_id).status == JobStatus.CANCELED


# 0 writes progress after every batch, and a write to a canceled row stops the render by
# itself; at the production interval (1 s) only the worker's own check (ShouldStop) can.
@pytest.mark.parametrize("progress_interval", [0.0, 1.0])
def test_a_running_job_stops_within_one_tile_batch(
    client: FlaskClient,
    session: Session,
    storage: Storage,
    runtime: Runtime,
    monkeypatch: pytest.MonkeyPatch,
    progress_interval: float,
) -> None:
    runtime = with_settings(runtime, progress_interval=progress_interval)
    job = make_job(session, storage, params={"steps": 50, "octaves": 2, "seed": 1})
    calls: list[int] = []

    def cancel_at_the_second_batch(n: int) -> None:
        calls.append(n)
        if n == 2:
            assert client.post(f"/v1/jobs/{job.id}/cancel").status_code == 200

    before_each_gradient(monkeypatch, cancel_at_the_second_batch)

    assert run_job(job.id, runtime) is None

    assert calls == [1, 2]  # the batch under way when the cancel came was the last
    canceled = status_of(session, job.id)
    assert canceled.status == JobStatus.CANCELED and canceled.result_key is None


def test_a_finished_job_cannot_be_canceled(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    job = make_job(session, storage, status=JobStatus.SUCCEEDED)
    body = assert_problem(client.post(f"/v1/jobs/{job.id}/cancel"), 409)
    assert body["job_status"] == "succeeded"
    assert_problem(client.post(f"/v1/jobs/{uuid.uuid4()}/cancel"), 404)


def test_a_failed_job_runs_again_as_a_new_attempt(
    client: FlaskClient,
    session: Session,
    storage: Storage,
    runtime: Runtime,
    settings: Settings,
) -> None:
    job = make_job(session, storage)
    storage.delete(job.input_key)
    assert run_job(job.id, runtime) == JobStatus.FAILED
    storage.put(job.input_key, image_bytes())  # the cause is mended

    response = client.post(f"/v1/jobs/{job.id}/retry")

    assert response.status_code == 202
    assert response.get_json()["status"] == "queued" and response.get_json()["error"] is None
    assert str(job.id) in queued_job_ids(settings)
    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    assert status_of(session, job.id).attempt == 2


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED])
def test_only_failed_or_canceled_jobs_can_be_retried(
    client: FlaskClient, session: Session, storage: Storage, status: JobStatus
) -> None:
    job = make_job(session, storage, status=status)
    assert assert_problem(client.post(f"/v1/jobs/{job.id}/retry"), 409)["job_status"] == status


def test_jobs_list_newest_first_by_status_a_page_at_a_time(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    ids = [submit(client, image_bytes()).get_json()["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[1]}/cancel")

    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query).get_json()
        assert len(page["jobs"]) <= 2
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == ids[::-1]
    canceled = client.get("/v1/jobs", query_string={"status": "canceled"}).get_json()
    assert [job["id"] for job in canceled["jobs"]] == [ids[1]]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"status": "done"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"cursor": "nonsense"}, "cursor"),
    ],
)
def test_bad_list_parameters_are_422(client: FlaskClient, query: dict, field: str) -> None:
    body = assert_problem(client.get("/v1/jobs", query_string=query), 422)
    assert body["errors"][0]["field"] == field


def test_the_list_limit_is_20_by_default_and_100_at_most(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    for _ in range(101):
        make_job(session, storage)

    default = client.get("/v1/jobs").get_json()
    largest = client.get("/v1/jobs", query_string={"limit": 100}).get_json()
    rest = client.get("/v1/jobs", query_string={"limit": 100, "cursor": largest["next_cursor"]})

    assert len(default["jobs"]) == 20 and default["next_cursor"] is not None
    assert len(largest["jobs"]) == 100 and largest["next_cursor"] is not None
    assert len(rest.get_json()["jobs"]) == 1 and rest.get_json()["next_cursor"] is None


def test_concurrent_cancels_agree(client: FlaskClient, session: Session, storage: Storage) -> None:
    job = make_job(session, storage)
    codes: list[int] = []
    threads = [
        threading.Thread(
            target=lambda: codes.append(client.post(f"/v1/jobs/{job.id}/cancel").status_code)
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(codes) == [200, 409]
