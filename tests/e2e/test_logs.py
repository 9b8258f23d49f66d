"""Logs: one JSON object per line from the API and the worker, each tagged with its job."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from api import create_app
from shared.logs import configure_logging, log_context
from shared.models import Job, JobStatus, utcnow
from shared.queue import RENDER_TASK, create_celery
from shared.settings import Settings, load_settings
from shared.storage import Storage
from tests.utils import authed_client, make_job, running_worker, wait_for
from worker.jobs import run_job
from worker.maintenance import reap_stale_jobs
from worker.runtime import Runtime

FIELDS = {"timestamp", "level", "logger", "message", "job_id", "attempt", "worker"}


@pytest.fixture
def log_stream(settings: Settings) -> Iterator[io.StringIO]:
    """Where this process's log records go during the test, as configured for production."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(settings, stream)
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def records(text: str) -> list[dict[str, Any]]:
    """Each line as the JSON object it must be, with every field a log query relies on."""
    parsed = [json.loads(line) for line in text.splitlines()]
    for record in parsed:
        assert record.keys() >= FIELDS, record
    return parsed


def test_an_api_route_about_a_job_logs_with_its_id(
    settings: Settings,
    session: Session,
    storage: Storage,
    log_stream: io.StringIO,
    dead_port: int,
) -> None:
    job = make_job(session, storage, status=JobStatus.FAILED)
    # Redis is away, so the retry is recorded but not enqueued: the API logs why.
    dead_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead_port}/0"})
    app = create_app(dead_redis)
    configure_logging(dead_redis, log_stream)  # create_app pointed the logs at stderr

    response = authed_client(app).post(f"/v1/jobs/{job.id}/retry")
    logging.getLogger("tests").info("after the request")
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()

    assert response.status_code == 202
    logged = records(log_stream.getvalue())
    failed = [r for r in logged if "not enqueued" in r["message"]]
    assert len(failed) == 1
    assert failed[0]["job_id"] == str(job.id) and failed[0]["level"] == "ERROR"
    assert failed[0]["attempt"] is None and failed[0]["worker"] is None
    assert "Traceback" in failed[0]["exc_info"]
    # The job's id leaves the log context with the request.
    assert logged[-1]["message"] == "after the request" and logged[-1]["job_id"] is None


def test_the_job_runner_logs_with_job_attempt_and_worker(
    runtime: Runtime,
    session: Session,
    storage: Storage,
    log_stream: io.StringIO,
) -> None:
    job = make_job(session, storage)

    assert run_job(job.id, runtime) == JobStatus.SUCCEEDED
    assert run_job(job.id, runtime) is None  # a redelivered message: logged, nothing done

    about_job = [r for r in records(log_stream.getvalue()) if str(job.id) in r["message"]]
    assert {r["job_id"] for r in about_job} == {str(job.id)}
    assert {r["worker"] for r in about_job} == {"test-worker"}
    by_message = {r["message"]: r for r in about_job}
    assert by_message[f"job {job.id} attempt 1 claimed by test-worker"]["attempt"] == 1
    assert by_message[f"job {job.id} succeeded"]["attempt"] == 1
    assert by_message[f"job {job.id} succeeded"]["level"] == "INFO"
    # The second call never claimed the job, so it has no attempt to tell.
    assert by_message[f"job {job.id} is not queued; nothing to do"]["attempt"] is None


def test_the_reaper_logs_with_the_job_it_puts_back(
    settings: Settings, session: Session, storage: Storage, log_stream: io.StringIO
) -> None:
    silent_since = utcnow() - timedelta(seconds=2 * settings.lease_seconds)
    job = make_job(
        session,
        storage,
        status=JobStatus.RUNNING,
        attempt=1,
        worker="gone:42",
        heartbeat_at=silent_since,
    )

    assert reap_stale_jobs(session, settings) == ([job.id], [])

    (record,) = [r for r in records(log_stream.getvalue()) if r["logger"] == "worker.maintenance"]
    assert record["level"] == "WARNING" and "put back in the queue" in record["message"]
    assert (record["job_id"], record["attempt"], record["worker"]) == (str(job.id), 1, "gone:42")


@pytest.mark.e2e
@pytest.mark.parametrize("database_kind", ["sqlite"], indirect=True)
def test_a_celery_worker_process_logs_json_lines_with_the_job(
    settings: Settings, session: Session, storage: Storage, client: FlaskClient, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    with running_worker(settings, log):
        job = make_job(session, storage)
        celery = create_celery(settings)
        celery.send_task(RENDER_TASK, args=[str(job.id)])
        celery.close()

        def finished() -> Job | None:
            session.expire_all()
            done = session.get_one(Job, job.id)
            return done if done.status.is_terminal() else None

        done = wait_for(finished, 180, "the worker to render the job", every=0.2)
        # While it is up, the worker also counts as online (idle now) in the metrics.
        scraped = client.get("/metrics").get_data(as_text=True)
    output = log.read_text()

    assert done.status == JobStatus.SUCCEEDED, done.error
    # Python's records are JSON, Celery's own included; what bypasses Python logging (the
    # warning printed before logging is set up, TensorFlow's native messages) is not.
    logged = records("\n".join(line for line in output.splitlines() if line.startswith("{")))
    assert {"celery.apps.worker", "worker.jobs"} <= {r["logger"] for r in logged}
    logged = [r for r in logged if str(job.id) in r["message"]]
    assert len(logged) >= 2, output[-3000:]
    assert {r["job_id"] for r in logged} == {str(job.id)}
    assert {r["worker"] for r in logged} == {done.worker}
    assert [r["attempt"] for r in logged if "succeeded" in r["message"]] == [1]
    online = {
        sample.labels["queue"]: sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "oneiro_workers_online"
    }
    assert online[settings.queue] == 1


@pytest.fixture
def restored_root_logger() -> Iterator[None]:
    """Whatever a test configures, the root logger is as it was afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_format_text_and_log_level_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, restored_root_logger: None
) -> None:
    monkeypatch.setenv("ONEIRO_LOG_FORMAT", "text")
    monkeypatch.setenv("ONEIRO_LOG_LEVEL", "warning")
    stream = io.StringIO()
    configure_logging(load_settings(), stream)

    log = logging.getLogger("oneiro.test")
    with log_context(job_id="j-1", attempt=2, worker="w-1"):
        log.info("below the level")
        log.warning("at the level")
    log.error("outside any job")

    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING oneiro\.test "
        r"\[job=j-1 attempt=2 worker=w-1\] at the level",
        lines[0],
    )
    unknown = "[job=None attempt=None worker=None]"
    assert lines[1].endswith(f" ERROR oneiro.test {unknown} outside any job")


def test_json_is_the_default_format_and_info_the_default_level(
    monkeypatch: pytest.MonkeyPatch, restored_root_logger: None
) -> None:
    monkeypatch.delenv("ONEIRO_LOG_FORMAT", raising=False)
    monkeypatch.delenv("ONEIRO_LOG_LEVEL", raising=False)
    stream = io.StringIO()
    configure_logging(load_settings(), stream)

    logging.getLogger("oneiro.test").debug("below the level")
    logging.getLogger("oneiro.test").info("at the level")

    (line,) = records(stream.getvalue())
    assert line["level"] == "INFO" and line["message"] == "at the level"


def test_the_default_format_is_text_at_a_terminal(
    monkeypatch: pytest.MonkeyPatch, restored_root_logger: None
) -> None:
    # `make run` leaves its children the terminal: a person reads those lines, not a collector.
    monkeypatch.delenv("ONEIRO_LOG_FORMAT", raising=False)
    reader, writer = os.openpty()
    with open(writer, "w", closefd=True) as terminal:
        configure_logging(load_settings(), terminal)
        logging.getLogger("oneiro.test").info("at the terminal")
        terminal.flush()
        line = os.read(reader, 4096).decode()
    os.close(reader)

    assert " INFO oneiro.test " in line and line.rstrip().endswith("at the terminal")
    assert not line.lstrip().startswith("{")
