"""GET /v1/jobs/{id}/events: Server-Sent Events of a job's changes until it ends."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from shared.changes import publish_change
from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import Storage
from tests.test_api import assert_problem
from tests.utils import make_job


def read_events(client: FlaskClient, path: str, **headers: str) -> list[dict[str, Any]]:
    response = client.get(path, headers=headers, buffered=True)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        fields = dict(
            line.split(": ", 1)
            for line in block.splitlines()
            if ": " in line and not line.startswith(":")
        )
        if "data" in fields:
            events.append(
                {"id": fields["id"], "event": fields["event"], "job": json.loads(fields["data"])}
            )
    return events


def test_the_stream_follows_progress_to_the_end(
    client: FlaskClient,
    session: Session,
    storage: Storage,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    job = make_job(session, storage, status=JobStatus.RUNNING, attempt=1)

    def work() -> None:
        for fraction in (0.25, 0.5, 0.75):
            time.sleep(0.15)
            with sessions.begin() as other:
                other.execute(
                    update(Job).where(Job.id == job.id).values(progress={"fraction": fraction})
                )
            publish_change(settings.redis_url, job.id)  # as the worker does after each write
        time.sleep(0.15)
        with sessions.begin() as other:
            other.execute(
                update(Job)
                .where(Job.id == job.id)
                .values(
                    status=JobStatus.SUCCEEDED, finished_at=utcnow(), progress={"fraction": 1.0}
                )
            )
        publish_change(settings.redis_url, job.id)

    worker = threading.Thread(target=work)
    worker.start()
    events = read_events(client, f"/v1/jobs/{job.id}/events")
    worker.join()

    fractions = [e["job"]["progress"]["fraction"] for e in events]
    assert fractions == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [e["event"] for e in events] == ["running"] * 4 + ["succeeded"]
    assert len({e["id"] for e in events}) == len(events)


def test_a_reconnect_with_last_event_id_does_not_repeat_the_last_state(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    job = make_job(session, storage, status=JobStatus.FAILED, error="boom", attempt=1)
    (first,) = read_events(client, f"/v1/jobs/{job.id}/events")
    assert first["event"] == "failed" and first["job"]["error"] == "boom"

    # The job already ended in the state the client has: the stream closes with nothing new.
    assert read_events(client, f"/v1/jobs/{job.id}/events", **{"Last-Event-ID": first["id"]}) == []


def test_events_of_an_unknown_job_are_404(client: FlaskClient) -> None:
    assert_problem(client.get("/v1/jobs/00000000-0000-4000-8000-000000000000/events"), 404)
