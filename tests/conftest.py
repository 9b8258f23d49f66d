"""Fixtures: real Redis, real SQLite and PostgreSQL databases migrated by Alembic, the app."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from shared.db import create_db_engine, create_session_factory
from shared.queue import redis_answers
from shared.settings import Settings, load_settings
from shared.storage import Storage, open_storage
from tests.utils import (
    WERKZEUG_LISTENING,
    alembic_config,
    authed_client,
    drop_queues,
    http_answers,
    listening_port,
    postgres_database,
    redis_on_free_port,
    wait_for,
)
from worker.runtime import Runtime

# Started first: the tests that take a minute or so, and the ones that start real processes. With
# one pytest process per core (make test), a long test started last keeps one process busy
# while the others have nothing left to do; started first, the short ones fill in around it.
FIRST = ("slow", "chaos", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first, then the chaos and e2e ones, the rest in their order (stable)."""

    def rank(item: pytest.Item) -> int:
        marked = [n for n, name in enumerate(FIRST) if item.get_closest_marker(name)]
        return min(marked, default=len(FIRST))

    items.sort(key=rank)


@pytest.fixture(scope="session")
def dead_port() -> Iterator[int]:
    """A port where nothing answers, for the whole run: bound here but never listening, so
    connections are refused and no other process can start serving on it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def no_saved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the developer's saved key, or sees their ONEIRO_URL/_API_KEY."""
    path = tmp_path / "client.json"
    monkeypatch.setenv("ONEIRO_CLIENT_CONFIG", str(path))
    monkeypatch.delenv("ONEIRO_URL", raising=False)
    monkeypatch.delenv("ONEIRO_API_KEY", raising=False)
    return path


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis that answers: the one at REDIS_URL, or one started for this run."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server, port = redis_on_free_port(tmp_path_factory.mktemp("redis"))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def queue_name(redis_url: str) -> Iterator[str]:
    """A queue of this test's own, so tests never see each other's (or anyone's) messages."""
    name = f"oneiro-test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_queues(redis_url, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_kind(request: pytest.FixtureRequest) -> str:
    """Each database the service runs on: a test that takes a database runs on both."""
    return str(request.param)


@pytest.fixture
def empty_database_url(database_kind: str, tmp_path: Path) -> Iterator[str]:
    """The URL of a new, empty database of each kind."""
    if database_kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'oneiro.db'}"
    else:
        yield from postgres_database()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head by Alembic once per test process, for tests to copy."""
    path = tmp_path_factory.mktemp("migrated") / "oneiro.db"
    command.upgrade(alembic_config(f"sqlite:///{path}"), "head")
    return path


@pytest.fixture(scope="session")
def migrated_postgres() -> Iterator[str]:
    """The name of a PostgreSQL database migrated to head by Alembic once per test process,
    which tests copy (CREATE DATABASE ... TEMPLATE); its migration leaves no connection open."""
    for url in postgres_database():
        command.upgrade(alembic_config(url), "head")
        yield str(sa.engine.make_url(url).database)


@pytest.fixture
def database_url(
    database_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A new database migrated to head by Alembic (the only way the schema is made): a copy of
    the test process's migrated one, which is the same schema at a fiftieth of the time (a
    migration from empty costs 0.1 to 0.2 s, and 1,200 tests take a database)."""
    if database_kind == "sqlite":
        path = tmp_path / "oneiro.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite:///{path}"
    else:
        yield from postgres_database(template=request.getfixturevalue("migrated_postgres"))


@pytest.fixture
def settings(tmp_path: Path, database_url: str, redis_url: str, queue_name: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        redis_url=redis_url,
        queue=queue_name,
        weights="random",
        weights_download=False,
        progress_interval=0.0,
        enqueue_timeout=1.0,
    )


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = create_db_engine(settings.database_url)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    with sessions() as session:
        yield session


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings.storage_url)


@pytest.fixture
def runtime(settings: Settings, sessions: sessionmaker[Session], storage: Storage) -> Runtime:
    """What a worker process holds (settings, sessions, storage), on the test's database and
    storage, named test-worker; tests.utils.with_settings varies its settings."""
    return Runtime(settings=settings, sessions=sessions, storage=storage, name="test-worker")


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client calling as the test tenant (tests.utils.TEST_TENANT), with its own key."""
    return authed_client(app)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server on this machine: moto in server mode, over HTTP."""
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    log = log_path.open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", "0"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{listening_port(log_path, server, WERKZEUG_LISTENING, 30)}"
    wait_for(lambda: http_answers(endpoint), 30, "moto_server")
    try:
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """An `s3://` storage URL on a fresh bucket, with the AWS variables pointing at it."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"oneiro-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/renders"
