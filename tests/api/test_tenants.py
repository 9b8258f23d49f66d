"""Tenants and keys: every /v1 call needs a live key, a tenant sees only its own jobs, and each
tenant has a request rate and a cap on active jobs. Real database, real Redis."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cachetools import TTLCache
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from api import auth, create_app
from client.cli import main as cli
from client.config import read_client_config
from dev.launcher import LOCAL_TENANT, ensure_local_key
from shared.models import ApiKey, Job, JobStatus, Tenant
from shared.settings import Settings
from shared.storage import Storage
from shared.tenants import authenticate
from tests.utils import (
    assert_problem,
    authed_client,
    image_bytes,
    make_job,
    stored_files,
    submit,
    tenant_named,
)

# Every route under /v1 that names a job, with its method.
JOB_ROUTES = [
    ("GET", "/v1/jobs/{id}"),
    ("GET", "/v1/jobs/{id}/result"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/jobs/{id}/preview"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/retry"),
]


def test_every_v1_route_needs_a_live_key(app: Flask, session: Session, storage: Storage) -> None:
    job = make_job(session, storage)
    anonymous = app.test_client()
    routes = [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), *JOB_ROUTES]
    for method, route in routes:
        for headers in ({}, {"Authorization": "Bearer oneiro_not-a-key"}, {"Authorization": "x"}):
            response = anonymous.open(route.format(id=job.id), method=method, headers=headers)
            body = assert_problem(response, 401)
            assert "Bearer" in body["detail"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # Health, readiness stay open (load balancers and orchestrators do not hold keys).
    assert anonymous.get("/healthz").status_code == 200
    assert anonymous.get("/readyz").status_code == 200


def test_another_tenants_job_is_exactly_as_unknown_as_no_job(
    app: Flask, session: Session, storage: Storage
) -> None:
    theirs = make_job(session, storage, status=JobStatus.FAILED)
    mine = authed_client(app, "another-studio")
    never = uuid.uuid4()
    for method, route in JOB_ROUTES:
        foreign = mine.open(route.format(id=theirs.id), method=method)
        unknown = mine.open(route.format(id=never), method=method)
        foreign_body = assert_problem(foreign, 404)
        unknown_body = assert_problem(unknown, 404)
        # The same answer but for the id itself: nothing tells the job exists.
        assert foreign_body["detail"].replace(str(theirs.id), "ID") == unknown_body[
            "detail"
        ].replace(str(never), "ID")
    assert mine.get("/v1/jobs").get_json()["jobs"] == []
    session.expire_all()
    assert session.get_one(Job, theirs.id).status == JobStatus.FAILED  # retry did nothing


def test_lists_hold_only_the_callers_jobs(app: Flask, session: Session, storage: Storage) -> None:
    ours = authed_client(app, "studio-a")
    theirs = authed_client(app, "studio-b")
    a = [submit(ours, image_bytes()).get_json()["id"] for _ in range(2)]
    b = [submit(theirs, image_bytes()).get_json()["id"] for _ in range(3)]
    assert [j["id"] for j in ours.get("/v1/jobs").get_json()["jobs"]] == a[::-1]
    assert [j["id"] for j in theirs.get("/v1/jobs").get_json()["jobs"]] == b[::-1]


def test_keys_are_stored_only_as_hashes_and_revoking_one_locks_it_out(
    settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The API trusts a checked key for auth_cache_seconds: a revoked key stops within that.
    # The cache reads a clock of the test's own, so that "within" is exact, not a sleep.
    now = [0.0]
    monkeypatch.setattr(auth, "TTLCache", functools.partial(TTLCache, timer=lambda: now[0]))
    app = create_app(settings.model_copy(update={"auth_cache_seconds": 2.0}))
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setattr("shared.settings.get_settings", lambda: settings)
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--tenant", "acme"])
    assert made.exit_code == 0, made.output
    key = made.stdout.strip()
    assert key.startswith("oneiro_") and "webhook signing secret" in made.stderr

    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    assert client.get("/v1/jobs").status_code == 200

    # The key appears nowhere in the database, only its SHA-256.
    dump = [
        json.dumps([str(v) for v in row])
        for table in ("tenants", "api_keys")
        for row in session.execute(text(f"SELECT * FROM {table}"))
    ]
    assert dump and not any(key in row or key[7:] in row for row in dump)

    second = runner.invoke(cli, ["keys", "create", "--tenant", "acme"])
    assert "webhook signing secret" not in second.stderr  # same tenant, no new secret
    assert session.scalar(select(func.count()).select_from(Tenant)) == 1

    assert client.get("/v1/jobs").status_code == 200  # now in the API's key cache
    revoked = runner.invoke(cli, ["keys", "revoke", key[:13]])
    assert revoked.exit_code == 0 and "revoked 1" in revoked.stdout
    now[0] = 1.9
    assert client.get("/v1/jobs").status_code == 200  # still trusted from the cache
    now[0] = 2.0
    assert_problem(client.get("/v1/jobs"), 401)
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {second.stdout.strip()}"
    assert other.get("/v1/jobs").status_code == 200  # the tenant's other key still works
    again = runner.invoke(cli, ["keys", "revoke", key])
    assert again.exit_code == 1 and "no live key" in again.output
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


@pytest.mark.parametrize("command", [["create", "--tenant", "acme"], ["revoke", "oneiro_x"]])
def test_keys_on_a_database_never_migrated_say_how_to_make_the_schema(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "never-migrated.db"
    database.touch()  # an empty SQLite file, as `make run` never got to migrate
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.setenv("ONEIRO_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(cli, ["keys", *command])
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: the database at DATABASE_URL has no schema yet: create it with "
        "`alembic upgrade head` (`make run` does this first)\n"
    )
    with contextlib.closing(sqlite3.connect(database)) as db:  # no table was made
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_make_run_makes_a_local_key_once_and_saves_it_for_the_cli(
    settings: Settings, session: Session, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONEIRO_CLIENT_CONFIG", str(tmp_path / "client.json"))
    key = ensure_local_key(settings, "http://127.0.0.1:8000")
    saved = read_client_config()
    assert saved == {"url": "http://127.0.0.1:8000", "api_key": key}
    assert (tmp_path / "client.json").stat().st_mode & 0o077 == 0
    tenant = authenticate(session, saved["api_key"])
    assert tenant is not None and tenant.name == LOCAL_TENANT
    assert ensure_local_key(settings, "http://127.0.0.1:8000") is None  # second start: kept
    assert session.scalar(select(func.count()).select_from(ApiKey)) == 1


@pytest.fixture
def limited(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings.model_copy(update={"rate_limit": "5/minute", "max_active_jobs": 2}))
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_a_tenant_over_its_request_rate_gets_429_with_retry_after(limited: Flask) -> None:
    busy, calm = authed_client(limited, "busy"), authed_client(limited, "calm")
    answers = [busy.get("/v1/jobs").status_code for _ in range(5)]
    assert answers == [200] * 5
    over = busy.get("/v1/jobs")
    body = assert_problem(over, 429)
    assert 0 < int(over.headers["Retry-After"]) <= 60
    assert "5 per 1 minute" in body["detail"]
    assert calm.get("/v1/jobs").status_code == 200  # counted per tenant


def test_a_tenant_at_its_active_job_cap_gets_429_and_nothing_is_written(
    limited: Flask, session: Session
) -> None:
    client = authed_client(limited, "prolific")
    first, second = (submit(client, image_bytes()).get_json()["id"] for _ in range(2))
    refused = submit(client, image_bytes())
    body = assert_problem(refused, 429)
    assert (body["limit"], body["value"]) == (2, 2) and refused.headers["Retry-After"]
    assert session.scalar(select(func.count()).select_from(Job)) == 2
    assert len(stored_files(limited.extensions["oneiro"].settings)) == 2
    folders = Path(limited.extensions["oneiro"].settings.storage_url, "jobs").iterdir()
    assert sorted(p.name for p in folders) == sorted([first, second])  # not even a folder
    # Another tenant is not held back by this one's jobs.
    assert submit(authed_client(limited, "other"), image_bytes()).status_code == 202

    # A canceled job frees a place; retrying it while the cap is full is refused too.
    assert client.post(f"/v1/jobs/{first}/cancel").status_code == 200
    third = submit(client, image_bytes())
    assert third.status_code == 202
    assert_problem(client.post(f"/v1/jobs/{first}/retry"), 429)
    tenant = tenant_named(session, "prolific")
    active = select(func.count()).where(
        Job.tenant_id == tenant.id, Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])
    )
    assert session.scalar(active) == 2 and second


def test_a_tenant_already_past_its_cap_is_refused_too(
    limited: Flask, session: Session, storage: Storage
) -> None:
    # The cap is soft: submits at the same moment can pass it. Past it, every submit is a 429.
    tenant = tenant_named(session, "overdrawn")
    for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.QUEUED):
        make_job(session, storage, tenant_id=tenant.id, status=status)

    body = assert_problem(submit(authed_client(limited, "overdrawn"), image_bytes()), 429)

    assert (body["limit"], body["value"]) == (2, 3)
