"""Resumable uploads (tus) with the real tuspy client against the API under gunicorn and a real
worker: a 200 MB video sent in 8 MB chunks, its connection cut in the middle of the 11th,
resumed, and rendered as a job, on local storage and on S3 (moto); and the refusals (another
tenant's upload, an expired one, one past the quota, bytes that are no video), each clear and
leaving nothing behind."""

from __future__ import annotations

import io
import json
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import requests
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed

from shared.models import Job, Upload, utcnow
from shared.settings import load_settings
from shared.storage import open_storage
from tests.utils import Proxy, Stack, new_key, running_stack, stored_files, write_padded_clip
from worker.maintenance import expire_uploads

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
CHUNK = 8 * MB
BIG = 200 * MB
TUS = {"Tus-Resumable": "1.0.0"}
# A small render of a 3-frame clip: the test is about the bytes, not the dream.
PARAMS = json.dumps({"steps": 1, "octaves": 1, "tile_size": 96})


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    # A quota of 500 MB: one 200 MB upload fits, two of 300 MB do not.
    with running_stack(
        tmp_path_factory.mktemp("uploads"),
        redis_url,
        ONEIRO_UPLOAD_QUOTA_GB="0.5",
        ONEIRO_MAX_UPLOAD_GB="0.4",
    ) as running:
        yield running
        sys.stdout.write(running.api_log.read_text()[-3000:])


@pytest.fixture(scope="module")
def big_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "big.mp4"
    write_padded_clip(path, BIG, size=(96, 64), frames=3, audio=False)
    return path


def tus(stack: Stack, url: str, key: str | None = None) -> TusClient:
    return TusClient(f"{url}/v1/uploads", headers={"Authorization": f"Bearer {key or stack.key}"})


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def head(stack: Stack, upload: str, key: str | None = None) -> requests.Response:
    return requests.head(
        f"{stack.url}/v1/uploads/{upload}",
        headers={**TUS, "Authorization": f"Bearer {key or stack.key}"},
        timeout=10,
    )


def submit(stack: Stack, part: str, upload: str, key: str | None = None, **headers: str):
    return requests.post(
        f"{stack.url}/v1/jobs",
        headers={"Authorization": f"Bearer {key or stack.key}", **headers},
        files={part: (None, f"upload:{upload}"), "params": (None, PARAMS)},
        timeout=60,
    )


def assert_problem(response: requests.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    for word in words:
        assert word in body["detail"], body
    return body


def send_cut_and_resume(stack: Stack, path: Path) -> str:
    """Send `path` through a proxy in 8 MB chunks, cut the link 3 MB into the 11th, resume
    with a new uploader from the URL alone; the upload's id."""
    port = int(stack.url.rsplit(":", 1)[1])
    # The last PATCH waits while S3 puts the parts together: seconds, under load.
    proxy = Proxy(("127.0.0.1", port), server_timeout=None)
    try:
        via = f"http://127.0.0.1:{proxy.port}"
        # tuspy opens a file_path once per chunk and never closes it: a stream of our own.
        stream = path.open("rb")
        uploader = tus(stack, via).uploader(
            file_stream=stream, chunk_size=CHUNK, metadata={"filename": path.name}
        )
        for _ in range(10):
            uploader.upload_chunk()
        assert uploader.offset == 10 * CHUNK
        proxy.cut_after(3 * MB)
        with pytest.raises((TusUploadFailed, TusCommunicationError)):
            uploader.upload_chunk()
        proxy.restore()
        # As a client resuming at once should: the cut PATCH may still be storing what it got
        # when the new one starts (its 409 is then answered by asking the offset again).
        resumed = tus(stack, via).uploader(
            file_stream=stream, url=uploader.url, chunk_size=CHUNK, retries=2, retry_delay=1
        )
        # What arrived of the cut chunk is kept (or at least the ten before it).
        assert 10 * CHUNK <= resumed.offset < 11 * CHUNK
        resumed.upload()
        assert resumed.offset == BIG
    finally:
        proxy.close()
        stream.close()
    answer = head(stack, upload_id(uploader.url))
    assert answer.status_code == 200
    assert answer.headers["Upload-Offset"] == answer.headers["Upload-Length"] == str(BIG)
    assert answer.headers["Cache-Control"] == "no-store"
    return upload_id(uploader.url)


def render_from(stack: Stack, upload: str) -> dict:
    answer = submit(stack, "video", upload, **{"Idempotency-Key": f"k-{upload}"})
    assert answer.status_code == 202, answer.text
    job = stack.wait_until_ended(answer.json()["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "video" and job["progress"]["frame"] == 3
    # The same key and request: the same job. Another job from the same upload: refused.
    again = submit(stack, "video", upload, **{"Idempotency-Key": f"k-{upload}"})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    assert_problem(submit(stack, "video", upload), 409, "already the input")
    # It is the job's now: no more bytes, no deletion through /v1/uploads.
    assert head(stack, upload).status_code == 409
    return job


def test_a_200_mb_video_cut_midway_resumes_and_renders_on_local_storage(
    stack: Stack, big_clip: Path
) -> None:
    upload = send_cut_and_resume(stack, big_clip)
    stored = Path(stack.settings.storage_url) / "uploads" / upload / "data"
    assert stored.read_bytes() == big_clip.read_bytes()
    job = render_from(stack, upload)
    with Session(create_engine(stack.database_url)) as session:
        row = session.get(Job, uuid.UUID(job["id"]))
        assert row is not None and row.input_key == f"uploads/{upload}/data"


def test_a_200_mb_video_cut_midway_resumes_and_renders_on_s3(
    tmp_path: Path, redis_url: str, s3_url: str, big_clip: Path
) -> None:
    with running_stack(tmp_path, redis_url, storage_url=s3_url) as s3_stack:
        upload = send_cut_and_resume(s3_stack, big_clip)
        bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
        s3 = boto3.client("s3")
        key = f"{prefix}/uploads/{upload}/data"
        # Whole, and a multipart object: sent a part per chunk, never held whole.
        assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == BIG
        parts = s3.head_object(Bucket=bucket, Key=key, PartNumber=1)["PartsCount"]
        assert parts >= 25
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/uploads/{upload}/")
        assert [item["Key"] for item in listed["Contents"]] == [key]  # no tail left
        assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
        render_from(s3_stack, upload)


def small_upload(stack: Stack, tmp_path: Path, data: bytes, key: str | None = None) -> str:
    uploader = tus(stack, stack.url, key).uploader(file_stream=io.BytesIO(data), chunk_size=CHUNK)
    uploader.upload()
    return upload_id(uploader.url)


def upload_rows(stack: Stack) -> list[Upload]:
    with Session(create_engine(stack.database_url)) as session:
        return list(session.scalars(select(Upload)))


def test_the_server_speaks_tus_1_0_with_its_extensions(stack: Stack) -> None:
    answer = requests.options(f"{stack.url}/v1/uploads", timeout=10)
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert answer.headers["Tus-Extension"] == "creation,termination,expiration"
    assert answer.headers["Tus-Max-Size"] == str(400_000_000)
    made = requests.post(
        f"{stack.url}/v1/uploads",
        headers={**TUS, "Authorization": f"Bearer {stack.key}", "Upload-Length": "5"},
        timeout=10,
    )
    assert made.status_code == 201 and made.headers["Upload-Expires"]
    url = f"{stack.url}{made.headers['Location']}"
    auth = {**TUS, "Authorization": f"Bearer {stack.key}"}
    patch = {**auth, "Content-Type": "application/offset+octet-stream"}
    wrong = requests.patch(url, data=b"ab", headers={**patch, "Upload-Offset": "1"}, timeout=10)
    assert_problem(wrong, 409, "offset 0")
    sent = requests.patch(url, data=b"ab", headers={**patch, "Upload-Offset": "0"}, timeout=10)
    assert sent.status_code == 204 and sent.headers["Upload-Offset"] == "2"
    too_many = requests.patch(
        url, data=b"cdefg", headers={**patch, "Upload-Offset": "2"}, timeout=10
    )
    assert_problem(too_many, 400, "length of 5")
    no_version = requests.patch(url, data=b"c", headers={"Authorization": auth["Authorization"]})
    assert no_version.status_code == 412 and no_version.headers["Tus-Version"] == "1.0.0"
    ended = requests.delete(url, headers=auth, timeout=10)
    assert ended.status_code == 204
    assert requests.head(url, headers=auth, timeout=10).status_code == 404


def test_another_tenants_upload_is_not_found_and_stays_its_own(
    stack: Stack, tmp_path: Path
) -> None:
    upload = small_upload(stack, tmp_path, b"x" * 1000)
    stranger = new_key(stack.database_url, tenant=f"stranger-{uuid.uuid4().hex[:6]}")
    assert head(stack, upload, key=stranger).status_code == 404
    with pytest.raises(TusCommunicationError):
        tus(stack, stack.url, stranger).uploader(
            file_stream=io.BytesIO(b"x" * 1000),
            url=f"{stack.url}/v1/uploads/{upload}",
        )
    gone = requests.delete(
        f"{stack.url}/v1/uploads/{upload}",
        headers={**TUS, "Authorization": f"Bearer {stranger}"},
        timeout=10,
    )
    assert_problem(gone, 404, upload)
    assert_problem(submit(stack, "video", upload, key=stranger), 422, "no upload")
    assert head(stack, upload).headers["Upload-Offset"] == "1000"  # the owner's, untouched


def test_an_expired_upload_is_gone_with_its_bytes(stack: Stack, tmp_path: Path) -> None:
    asked, swept = (small_upload(stack, tmp_path, b"y" * 2000) for _ in range(2))
    folder = Path(stack.settings.storage_url) / "uploads"
    engine = create_engine(stack.database_url)
    with Session(engine) as session:
        session.execute(
            update(Upload)
            .where(Upload.id.in_([uuid.UUID(asked), uuid.UUID(swept)]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        session.commit()
    # Asked for: 410, and deleted then and there; a job from it is refused.
    assert_problem(submit(stack, "image", asked), 422, "expired")
    assert head(stack, asked).status_code == 410
    assert not (folder / asked).exists() and head(stack, asked).status_code == 404
    # Never asked for again: maintenance deletes it.
    settings = load_settings(
        database_url=stack.database_url, storage_url=stack.settings.storage_url
    )
    with Session(engine) as session:
        assert expire_uploads(session, open_storage(settings.storage_url), settings) == [
            uuid.UUID(swept)
        ]
    assert not (folder / swept).exists()
    assert {str(row.id) for row in upload_rows(stack)}.isdisjoint({asked, swept})


def test_an_upload_past_the_quota_or_the_largest_is_refused(stack: Stack) -> None:
    auth = {**TUS, "Authorization": f"Bearer {stack.key}"}
    before = upload_rows(stack)

    def create(length: int) -> requests.Response:
        return requests.post(
            f"{stack.url}/v1/uploads", headers={**auth, "Upload-Length": str(length)}, timeout=10
        )

    assert_problem(create(400_000_001), 413, "ONEIRO_MAX_UPLOAD_GB")
    first = create(300_000_000)
    assert first.status_code == 201
    assert_problem(create(300_000_000), 413, "ONEIRO_UPLOAD_QUOTA_GB")
    assert len(upload_rows(stack)) == len(before) + 1
    requests.delete(f"{stack.url}{first.headers['Location']}", headers=auth, timeout=10)
    assert create(300_000_000).status_code == 201  # room again


def test_an_upload_that_is_no_video_is_refused_and_no_job_is_made(
    stack: Stack, tmp_path: Path
) -> None:
    upload = small_upload(stack, tmp_path, bytes(range(256)) * 4096)
    jobs_before = stack.http().get(f"{stack.url}/v1/jobs", timeout=10).json()["jobs"]
    files_before = stored_files(stack.settings)
    assert_problem(submit(stack, "video", upload), 422, "not a readable video")
    assert_problem(submit(stack, "image", upload), 422, "not an image")
    assert stack.http().get(f"{stack.url}/v1/jobs", timeout=10).json()["jobs"] == jobs_before
    assert stored_files(stack.settings) == files_before
    # The upload is still the tenant's to end: then nothing of it is left.
    ended = requests.delete(
        f"{stack.url}/v1/uploads/{upload}",
        headers={**TUS, "Authorization": f"Bearer {stack.key}"},
        timeout=10,
    )
    assert ended.status_code == 204
    assert not (Path(stack.settings.storage_url) / "uploads" / upload).exists()


def test_an_unfinished_upload_is_no_input_yet(stack: Stack) -> None:
    made = requests.post(
        f"{stack.url}/v1/uploads",
        headers={**TUS, "Authorization": f"Bearer {stack.key}", "Upload-Length": "100"},
        timeout=10,
    )
    upload = upload_id(made.headers["Location"])
    assert_problem(submit(stack, "video", upload), 422, "0 of its 100 bytes")


def test_one_patch_may_carry_more_than_a_direct_upload_may(stack: Stack) -> None:
    # 60 MB in one request, past ONEIRO_MAX_UPLOAD_BYTES (50 MiB): a PATCH is streamed to
    # storage, so the direct-upload cap is not its limit (tus-js-client sends one by default).
    auth = {**TUS, "Authorization": f"Bearer {stack.key}"}
    size = 60_000_000
    made = requests.post(
        f"{stack.url}/v1/uploads", headers={**auth, "Upload-Length": str(size)}, timeout=10
    )
    url = f"{stack.url}{made.headers['Location']}"
    sent = requests.patch(
        url,
        data=bytes(size),
        headers={**auth, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        timeout=120,
    )
    assert sent.status_code == 204 and sent.headers["Upload-Offset"] == str(size)
    assert requests.delete(url, headers=auth, timeout=10).status_code == 204
