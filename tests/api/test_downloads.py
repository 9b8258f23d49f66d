"""Results and previews without the API in the way (issue 15.6): ETag and Cache-Control,
If-None-Match (304), Range (206, 416), from file and S3 storage; with S3 and
ONEIRO_PRESIGNED_DOWNLOADS a redirect to a short-lived URL of the object itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from api import create_app
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import CHUNK_BYTES, Storage, open_storage, preview_key, result_key
from tests.utils import assert_problem, authed_client, make_job

# Larger than a chunk, so ranges cross chunk boundaries.
DATA = os.urandom(CHUNK_BYTES * 2 + 12345)


@pytest.fixture(params=["file", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def stored_settings(kind: str, settings: Settings, request: pytest.FixtureRequest) -> Settings:
    if kind == "s3":
        return settings.model_copy(update={"storage_url": request.getfixturevalue("s3_url")})
    return settings


def app_client(settings: Settings) -> Iterator[tuple[FlaskClient, Storage]]:
    app = create_app(settings)
    yield authed_client(app), app.extensions["oneiro"].storage
    app.extensions["oneiro"].engine.dispose()


@pytest.fixture
def served(stored_settings: Settings) -> Iterator[tuple[FlaskClient, Storage]]:
    yield from app_client(stored_settings)


def finished(session: Session, storage: Storage) -> Job:
    """A succeeded job whose result and preview are DATA."""
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, attempt=1)
    job.result_key = result_key(job.id, 1)
    storage.put(job.result_key, DATA)
    storage.put(preview_key(job.id, 1), DATA)
    session.commit()
    return job


@pytest.mark.parametrize("route", ["result", "preview"])
def test_an_unchanged_file_answers_304_to_its_etag_and_a_new_one_200(
    served: tuple[FlaskClient, Storage], session: Session, route: str
) -> None:
    client, storage = served
    job = finished(session, storage)
    url = f"/v1/jobs/{job.id}/{route}"
    first = client.get(url)
    assert first.status_code == 200 and first.data == DATA
    etag = first.headers["ETag"]
    assert etag.startswith('"') and first.headers["Cache-Control"] == "private, no-cache"
    assert first.headers["Accept-Ranges"] == "bytes"
    assert int(first.headers["Content-Length"]) == len(DATA)
    # A result is named for saving (its job and its format's extension); a preview is not.
    named = f'inline; filename="{job.id}.png"' if route == "result" else None
    assert first.headers.get("Content-Disposition") == named
    again = client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.data == b""
    assert again.headers["ETag"] == etag
    # The worker rewrites the file (a preview every few seconds): a new version, a new ETag.
    storage.put(preview_key(job.id, 1) if route == "preview" else job.result_key or "", b"new")
    changed = client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.data == b"new"
    assert changed.headers["ETag"] != etag


# Range headers, and the bytes each asks for (first, last): within a chunk, across a chunk's
# end, open-ended, a suffix, and past the end (cut to the object).
RANGES = [
    ("bytes=100-199", 100, 199),
    (f"bytes={CHUNK_BYTES - 10}-{CHUNK_BYTES + 9}", CHUNK_BYTES - 10, CHUNK_BYTES + 9),
    (f"bytes={CHUNK_BYTES + 5}-", CHUNK_BYTES + 5, len(DATA) - 1),
    ("bytes=-300", len(DATA) - 300, len(DATA) - 1),
    (f"bytes=0-{len(DATA) + 1000}", 0, len(DATA) - 1),
]


@pytest.mark.parametrize("route", ["result", "preview"])
def test_a_range_answers_206_with_those_bytes(
    served: tuple[FlaskClient, Storage], session: Session, route: str
) -> None:
    client, storage = served
    job = finished(session, storage)
    for asked, first, last in RANGES:
        # Closed as a WSGI server closes a body (a range stops reading before the end).
        with client.get(f"/v1/jobs/{job.id}/{route}", headers={"Range": asked}) as answer:
            assert answer.status_code == 206, (asked, answer.data[:200])
            assert answer.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
            assert int(answer.headers["Content-Length"]) == last - first + 1
            assert answer.data == DATA[first : last + 1], asked
            assert answer.headers["ETag"]


def test_an_unsatisfiable_range_is_a_416_saying_the_size(
    served: tuple[FlaskClient, Storage], session: Session
) -> None:
    client, storage = served
    job = finished(session, storage)
    answer = client.get(f"/v1/jobs/{job.id}/result", headers={"Range": f"bytes={len(DATA)}-"})
    body = assert_problem(answer, 416)
    assert answer.headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert str(len(DATA)) in body["detail"]


# Issue 23.13: these were 416s; RFC 9110 14.1.3 and 14.2 ask for the whole file instead.
WHOLE = [
    # A suffix longer than the file is the whole file, as a 206.
    (f"bytes=-{len(DATA) + 500}", 206),
    # A unit the server does not know, and several ranges (no multipart answers): ignored.
    ("items=0-5", 200),
    ("bytes=0-1,5-6", 200),
]


@pytest.mark.parametrize(("asked", "status"), WHOLE)
def test_a_long_suffix_another_unit_or_several_ranges_get_the_whole_file(
    served: tuple[FlaskClient, Storage], session: Session, asked: str, status: int
) -> None:
    client, storage = served
    job = finished(session, storage)

    with client.get(f"/v1/jobs/{job.id}/result", headers={"Range": asked}) as answer:
        assert answer.status_code == status, answer.data[:200]
        assert answer.data == DATA
        assert int(answer.headers["Content-Length"]) == len(DATA)
        if status == 206:
            assert answer.headers["Content-Range"] == f"bytes 0-{len(DATA) - 1}/{len(DATA)}"
        else:
            assert "Content-Range" not in answer.headers


def test_with_s3_and_presigned_downloads_the_api_redirects_to_the_object(
    settings: Settings, session: Session, s3_url: str
) -> None:
    presigned = settings.model_copy(
        update={"storage_url": s3_url, "presigned_downloads": True, "presigned_expiry": 60}
    )
    for client, storage in app_client(presigned):
        job = finished(session, storage)
        for route, media in (("result", "image/png"), ("preview", "image/jpeg")):
            answer = client.get(f"/v1/jobs/{job.id}/{route}")
            assert answer.status_code == 307
            assert answer.headers["Cache-Control"] == "private, no-store"
            location = answer.headers["Location"]
            assert "Expires=" in location or "X-Amz-Expires=60" in location
            fetched = requests.get(location, timeout=10)
            assert fetched.status_code == 200 and fetched.content == DATA
            assert fetched.headers["Content-Type"] == media
            ranged = requests.get(location, headers={"Range": "bytes=10-19"}, timeout=10)
            assert ranged.status_code == 206 and ranged.content == DATA[10:20]
        # The API still says 409 before there is a result (no URL to a missing object).
        queued = make_job(session, storage)
        assert_problem(client.get(f"/v1/jobs/{queued.id}/result"), 409)


def test_file_storage_streams_even_with_presigned_downloads_on(
    settings: Settings, session: Session
) -> None:
    for client, storage in app_client(settings.model_copy(update={"presigned_downloads": True})):
        job = finished(session, storage)
        answer = client.get(f"/v1/jobs/{job.id}/result")
        assert answer.status_code == 200 and answer.data == DATA


def test_a_ranged_s3_read_asks_s3_for_the_range_only(s3_url: str) -> None:
    storage = open_storage(s3_url)
    storage.put("jobs/x/result.png", DATA)
    stored = storage.open("jobs/x/result.png")
    stored.seek(CHUNK_BYTES + 7)
    chunks: list[Any] = list(stored)
    assert b"".join(chunks) == DATA[CHUNK_BYTES + 7 :]
    assert stored.tell() == len(DATA)
