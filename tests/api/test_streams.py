"""Long-lived and slow connections are cheap (issue 10, point 1): event streams wait for change
notifications in an evented gunicorn, end when their key is revoked, downloads are streamed, and
slow clients are cut off without holding up anyone. Against real gunicorn and Redis."""

from __future__ import annotations

import socket
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.changes import publish_change
from shared.models import Job, JobStatus
from shared.settings import Settings
from shared.storage import CHUNK_BYTES, Storage
from shared.tenants import revoke_key
from tests.utils import make_job, new_key, serving_api

# More than the 3 processes x 6 threads that used to serve the API: each stream held one.
STREAMS = 40


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """The API under gunicorn; a safety re-read long enough that only notifications count."""
    with serving_api(
        settings,
        tmp_path / "api.log",
        ONEIRO_EVENTS_REREAD_SECONDS="600",
        ONEIRO_EVENTS_KEY_RECHECK_SECONDS="1",
        ONEIRO_AUTH_CACHE_SECONDS="0",
        ONEIRO_API_KEEPALIVE="2",
        ONEIRO_API_IO_TIMEOUT="2",
        ONEIRO_RATE_LIMIT="100000/minute",
    ) as url:
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    return sock


def open_stream(url: str, job_id: uuid.UUID, key: str) -> socket.socket:
    """An event stream of the job, read up to its first event."""
    sock = connect(url)
    sock.sendall(
        f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: test\r\n"
        f"Authorization: Bearer {key}\r\nConnection: close\r\n\r\n".encode()
    )
    assert b"event: running" in read_until(sock, b"event: running", 10)
    return sock


def read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    """What the socket sends until `needle` arrives, it closes, or `timeout` passes."""
    received = b""
    deadline = time.monotonic() + timeout
    while needle not in received and (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            break
        received += data
    return received


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes the connection within `timeout` (reading what it sends)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


def timed_gets(url: str, key: str, paths: list[str]) -> list[tuple[int, float]]:
    """Each path fetched at the same time: (status, seconds)."""

    def get(path: str) -> tuple[int, float]:
        started = time.monotonic()
        answer = requests.get(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=10)
        return answer.status_code, time.monotonic() - started

    with ThreadPoolExecutor(len(paths)) as pool:
        return list(pool.map(get, paths))


def running_job(session: Session, storage: Storage) -> Job:
    return make_job(session, storage, status=JobStatus.RUNNING, attempt=1)


def test_forty_open_streams_leave_job_gets_and_healthz_prompt(
    api: str, settings: Settings, session: Session, storage: Storage
) -> None:
    key = new_key(settings.database_url)
    job = running_job(session, storage)
    streams = [open_stream(api, job.id, key) for _ in range(STREAMS)]
    try:
        answers = timed_gets(api, key, [f"/v1/jobs/{job.id}"] * 30 + ["/healthz"] * 5)
    finally:
        for sock in streams:
            sock.close()
    assert [status for status, _ in answers] == [200] * 35
    assert max(seconds for _, seconds in answers) < 3.0


def test_a_stream_hears_a_progress_write_when_it_is_published_not_by_polling(
    api: str, settings: Settings, session: Session, storage: Storage, sessions: sessionmaker
) -> None:
    key = new_key(settings.database_url)
    job = running_job(session, storage)
    stream = open_stream(api, job.id, key)
    try:
        # First a published change. Once it is heard the API process's feed is subscribed: on
        # subscribing it wakes every stream to re-read (pub/sub keeps nothing sent before),
        # which would read an unpublished change as well.
        with sessions.begin() as other:
            other.execute(update(Job).where(Job.id == job.id).values(progress={"fraction": 0.25}))
        publish_change(settings.redis_url, job.id)
        assert b'"fraction": 0.25' in read_until(stream, b'"fraction": 0.25', 10)
        # 0.25 may have been read at the stream's start, before the subscription was made: a
        # subscription made later wakes the stream to re-read once. Let that re-read happen
        # (nothing changed, so it sends nothing) before writing what must not be heard.
        read_until(stream, b"never sent", 1.0)

        with sessions.begin() as other:
            other.execute(update(Job).where(Job.id == job.id).values(progress={"fraction": 0.5}))
        # Written but not published: a stream that polled would send it within half a second.
        assert b"0.5" not in read_until(stream, b"0.5", 1.5)

        published = time.monotonic()
        publish_change(settings.redis_url, job.id)  # what the worker does after each write
        heard = read_until(stream, b'"fraction": 0.5', 5)
        assert b'"fraction": 0.5' in heard
        assert time.monotonic() - published < 1.0  # prompt: unpublished, it did not come in 1.5 s
    finally:
        stream.close()


def test_a_revoked_keys_stream_ends_within_the_recheck_interval(
    api: str, settings: Settings, session: Session, storage: Storage
) -> None:
    key = new_key(settings.database_url)
    job = running_job(session, storage)
    stream = open_stream(api, job.id, key)
    try:
        assert not closed_within(stream, 1.5)  # the key is live: the stream stays open
        revoke_key(session, key)
        assert closed_within(stream, 4.0)  # checked every second (ONEIRO_EVENTS_KEY_RECHECK_...)
    finally:
        stream.close()


@pytest.mark.parametrize("slow", ["headers", "body"])
def test_slow_clients_hold_up_no_one_and_are_cut_off(
    api: str, settings: Settings, session: Session, storage: Storage, slow: str
) -> None:
    key = new_key(settings.database_url)
    job = running_job(session, storage)
    started = time.monotonic()
    clients = [connect(api) for _ in range(STREAMS)]
    try:
        for sock in clients:
            if slow == "headers":  # a request line and half a header, the rest never comes
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: te")
            else:  # a whole request, but one byte of its 100 kB body
                sock.sendall(
                    f"POST /v1/jobs HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n"
                    "Content-Type: multipart/form-data; boundary=x\r\n"
                    "Content-Length: 100000\r\n\r\n-".encode()
                )
        answers = timed_gets(api, key, [f"/v1/jobs/{job.id}"] * 30 + ["/healthz"] * 5)
        assert [status for status, _ in answers] == [200] * 35
        assert max(seconds for _, seconds in answers) < 3.0
        # ONEIRO_API_KEEPALIVE (headers) and ONEIRO_API_IO_TIMEOUT (body) are 2 s here.
        assert all(closed_within(sock, 6 - (time.monotonic() - started)) for sock in clients)
    finally:
        for sock in clients:
            sock.close()


def test_a_large_result_is_sent_without_reading_it_whole(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    size = 48 * 1024 * 1024  # the 48 MB result of the issue
    job = make_job(session, storage, status=JobStatus.SUCCEEDED, result_key="results/big.png")
    storage.put("results/big.png", b"\x89PNG" + bytes(size - 4))

    tracemalloc.start()
    try:
        response = client.get(f"/v1/jobs/{job.id}/result", buffered=False)
        received = sum(len(chunk) for chunk in response.response)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        response.close()
    assert response.status_code == 200 and response.is_streamed
    assert response.headers["Content-Length"] == str(size) and received == size
    assert peak < 8 * CHUNK_BYTES  # a few chunks, never the file
