"""Idempotency-Key on POST /v1/jobs: a retried submission gets the original job."""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared.models import IdempotencyKey, Job, utcnow
from shared.settings import Settings
from tests.utils import (
    assert_problem,
    authed_client,
    image_bytes,
    queued_job_ids,
    stored_files,
    submit_with_key,
)


def jobs(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def test_the_same_key_and_request_return_the_original_job(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    first = submit_with_key(client, "k-1", image_bytes())
    again = submit_with_key(client, "k-1", image_bytes(), '{ "steps" : 3 }')  # respaced

    assert first.status_code == 202 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert jobs(session) == 1 and len(queued_job_ids(settings)) == 1
    assert len(stored_files(settings)) == 1


def test_the_same_key_with_another_request_is_422_and_writes_nothing(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    submit_with_key(client, "k-2", image_bytes())

    body = assert_problem(submit_with_key(client, "k-2", image_bytes(), '{"steps": 4}'), 422)

    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert jobs(session) == 1 and len(stored_files(settings)) == 1


def test_the_same_key_with_another_webhook_is_another_request(
    client: FlaskClient, session: Session
) -> None:
    def with_webhook(path: str) -> Any:
        return client.post(
            "/v1/jobs",
            headers={"Idempotency-Key": "k-hook"},
            data={
                "image": (io.BytesIO(image_bytes()), "a.png"),
                "webhook": json.dumps({"url": f"https://93.184.215.14/{path}"}),
            },
            content_type="multipart/form-data",
        )

    assert with_webhook("a").status_code == 202
    assert with_webhook("a").status_code == 200
    assert assert_problem(with_webhook("b"), 422)["errors"][0]["field"] == "Idempotency-Key"
    assert jobs(session) == 1


def test_the_same_key_and_params_with_another_image_is_422(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    assert submit_with_key(client, "k-img", image_bytes((96, 64))).status_code == 202

    body = assert_problem(submit_with_key(client, "k-img", image_bytes((64, 96))), 422)

    assert body["errors"][0]["field"] == "Idempotency-Key"
    assert jobs(session) == 1 and len(stored_files(settings)) == 1


def test_one_key_used_by_two_tenants_makes_two_jobs(
    app: Flask, client: FlaskClient, session: Session
) -> None:
    other = authed_client(app, "another-tenant")

    mine = submit_with_key(client, "k-shared", image_bytes())
    theirs = submit_with_key(other, "k-shared", image_bytes())

    assert mine.status_code == 202 and theirs.status_code == 202
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert jobs(session) == 2
    # Each tenant's retry still answers with its own job.
    assert (
        submit_with_key(other, "k-shared", image_bytes()).get_json()["id"]
        == theirs.get_json()["id"]
    )


def test_keys_expire_after_a_day(client: FlaskClient, session: Session) -> None:
    first = submit_with_key(client, "k-3", image_bytes()).get_json()["id"]
    session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
    session.commit()

    second = submit_with_key(client, "k-3", image_bytes())

    assert second.status_code == 202 and second.get_json()["id"] != first
    assert jobs(session) == 2


def test_concurrent_requests_with_one_key_make_one_job(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    answers: list[tuple[int, str]] = []

    def send() -> None:
        response = submit_with_key(client, "k-4", image_bytes())
        answers.append((response.status_code, response.get_json()["id"]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len({job_id for _, job_id in answers}) == 1
    assert sorted(code for code, _ in answers).count(202) == 1
    assert jobs(session) == 1 and len(stored_files(settings)) == 1


def test_a_key_is_1_to_255_characters(client: FlaskClient, session: Session) -> None:
    assert submit_with_key(client, "k", image_bytes()).status_code == 202
    assert submit_with_key(client, "k" * 255, image_bytes()).status_code == 202
    for bad in ("", "k" * 256):
        body = assert_problem(submit_with_key(client, bad, image_bytes()), 422)
        assert body["errors"][0]["field"] == "Idempotency-Key"
    assert jobs(session) == 2


def test_the_same_params_in_another_order_are_the_same_request(client: FlaskClient) -> None:
    first = submit_with_key(client, "k-order", image_bytes(), '{"steps": 3, "seed": 1}')
    again = submit_with_key(client, "k-order", image_bytes(), '{"seed": 1, "steps": 3}')

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
