"""Small plain functions that make test data."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import requests
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

from dev.localredis import start_redis
from shared.db import create_db_engine, create_session_factory
from shared.models import Job, JobStatus, Tenant
from shared.params import RenderParams
from shared.settings import Settings
from shared.storage import Storage, input_key
from shared.tenants import create_key

# The tenant the `client` fixture calls as, and that make_job gives its jobs to by default.
TEST_TENANT = "tests"

DATA = Path(__file__).parent / "data"
CHELSEA = DATA / "chelsea.png"  # 451 x 300, CC0 (see tests/data/README.md)


def image_bytes(size: tuple[int, int] = (96, 64), fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A small synthetic image in `fmt`: a gradient, so it is not flat."""
    image = Image.linear_gradient("L").resize(size).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process (worker, API) that reads these settings: this
    process's environment, the test settings as variables, then `extra` (ONEIRO_* names)."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ONEIRO_DATA_DIR": str(settings.data_dir),
        "ONEIRO_QUEUE": settings.queue,
        "ONEIRO_WEIGHTS": "random",
        "ONEIRO_WEIGHTS_DOWNLOAD": "false",
        **extra,
    }


def tenant_named(session: Session, name: str = TEST_TENANT) -> Tenant:
    """The tenant `name`, made (with a key nobody holds) when it does not exist yet."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        create_key(session, name)
        tenant = session.scalars(select(Tenant).where(Tenant.name == name)).one()
    return tenant


def new_key(database_url: str, tenant: str = TEST_TENANT) -> str:
    """A new API key of `tenant`, made in the database at `database_url`."""
    engine = create_db_engine(database_url)
    try:
        with create_session_factory(engine)() as session:
            return create_key(session, tenant).key
    finally:
        engine.dispose()


def authed_client(app: Flask, tenant: str = TEST_TENANT) -> FlaskClient:
    """A test client of `app` calling as `tenant`, with a key of its own."""
    client = app.test_client()
    key = new_key(app.extensions["oneiro"].settings.database_url, tenant)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


def make_job(session: Session, storage: Storage, **fields: Any) -> Job:
    """Store a small input and insert a job for it (the test tenant's), committed."""
    job_id = fields.pop("id", None) or uuid.uuid4()
    if "tenant_id" not in fields:
        fields["tenant_id"] = tenant_named(session).id
    data = fields.pop("image", None) or image_bytes()
    params = fields.pop("params", {"steps": 2, "octaves": 2, "seed": 7})
    with Image.open(io.BytesIO(data)) as decoded:
        width, height = decoded.size
    stored_input = input_key(job_id, "png")
    storage.put(stored_input, data)
    job = Job(
        id=job_id,
        status=fields.pop("status", JobStatus.QUEUED),
        params=RenderParams.model_validate(params).model_dump(mode="json"),
        input_key=stored_input,
        input_width=width,
        input_height=height,
        progress=fields.pop("progress", {}),
        **fields,
    )
    session.add(job)
    session.commit()
    return job


def wait_for(predicate: Any, timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (with any status)."""
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


def redis_on_free_port(workdir: Path, attempts: int = 5) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of a test's own and its port; another port when one is taken between
    choosing it and binding it (start_redis checks the answer is its own server's)."""
    from tests.conftest import free_port

    error = None
    for _ in range(attempts):
        port = free_port()
        try:
            return start_redis(port, workdir), port
        except RuntimeError as exc:
            error = exc
    raise AssertionError(f"no redis-server of our own in {attempts} tries: {error}")


# What a server started on port 0 logs once it listens: gunicorn, and werkzeug (moto_server).
GUNICORN_LISTENING = r"Listening at: http://127\.0\.0\.1:(\d+)"
WERKZEUG_LISTENING = r"Running on http://127\.0\.0\.1:(\d+)"


def listening_port(
    log: Path,
    process: subprocess.Popen[bytes],
    pattern: str = GUNICORN_LISTENING,
    timeout: float = 60,
) -> int:
    """The port a server started on port 0 chose, read from its log (`pattern`'s group): the
    kernel picks a free one, so no other process can take it between choosing and binding."""

    def announced() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited at start:\n{log.read_text()[-2000:]}")
        found = re.search(pattern, log.read_text())
        return int(found.group(1)) if found else None

    return int(wait_for(announced, timeout, f"{process.args} to listen"))


def maintenance_tasks(
    monkeypatch: Any, session: Session, storage: Storage, settings: Settings
) -> Any:
    """worker.tasks, its maintenance task running on the test database and storage."""
    from shared.db import create_session_factory as sessions_of
    from worker import tasks
    from worker.runtime import Runtime

    runtime = Runtime(
        settings=settings,
        sessions=sessions_of(session.get_bind()),  # type: ignore[arg-type]
        storage=storage,
        name="maintenance",
    )
    monkeypatch.setattr(tasks, "get_runtime", lambda: runtime)
    return tasks
