"""Calling the API in process, through Flask's test client, and reading its answers."""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.utils.data import TEST_TENANT, new_key


def authed_client(app: Flask, tenant: str = TEST_TENANT) -> FlaskClient:
    """A test client of `app` calling as `tenant`, with a key of its own."""
    client = app.test_client()
    key = new_key(app.extensions["oneiro"].settings.database_url, tenant)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def submit(client: FlaskClient, image: bytes | None, params: Any = None, **parts: Any) -> Any:
    """POST /v1/jobs with `image`, `params` (JSON unless a string already) and other `parts`."""
    data: dict[str, Any] = dict(parts)
    if image is not None:
        data["image"] = (io.BytesIO(image), "upload")
    if params is not None:
        data["params"] = params if isinstance(params, str) else json.dumps(params)
    return client.post("/v1/jobs", data=data, content_type="multipart/form-data")


def submit_with_key(
    client: FlaskClient, key: str, image: bytes, params: str = '{"steps": 3}'
) -> object:
    """POST /v1/jobs with the Idempotency-Key `key`."""
    return client.post(
        "/v1/jobs",
        headers={"Idempotency-Key": key},
        data={"image": (io.BytesIO(image), "a.png"), "params": params},
        content_type="multipart/form-data",
    )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    """Assert `response` is a problem+json of `status` with a title and detail; its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    body = response.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]
