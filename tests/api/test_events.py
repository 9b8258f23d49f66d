"""GET /v1/jobs/{id}/events: Server-Sent Events of a job's changes until it ends."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from api import streams as job_streams
from shared.changes import publish_change
from shared.models import Job, JobStatus, utcnow
from shared.settings import Settings
from shared.storage import Storage
from tests.utils import assert_problem, make_job


def parse_events(text: str) -> list[dict[str, Any]]:
    """The events (id, event, job) in a piece of an event stream; comment lines are skipped."""
    events = []
    for block in text.split("\n\n"):
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


def read_events(client: FlaskClient, path: str, **headers: str) -> list[dict[str, Any]]:
    response = client.get(path, headers=headers, buffered=True)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    return parse_events(response.get_data(as_text=True))


def test_the_stream_follows_progress_to_the_end(
    client: FlaskClient,
    session: Session,
    storage: Storage,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    job = make_job(session, storage, status=JobStatus.RUNNING, attempt=1)
    changes: list[dict[str, Any]] = [{"progress": {"fraction": f}} for f in (0.25, 0.5, 0.75)]
    changes.append(
        {"status": JobStatus.SUCCEEDED, "finished_at": utcnow(), "progress": {"fraction": 1.0}}
    )

    # Each change is made once the stream has sent the state before it, so every state is seen
    # whatever the machine's speed; the stream runs in this thread, between two reads.
    response = client.get(f"/v1/jobs/{job.id}/events", buffered=False)
    events: list[dict[str, Any]] = []
    for chunk in response.iter_encoded():
        new = parse_events(chunk.decode())
        events.extend(new)
        if new and changes:
            with sessions.begin() as other:
                other.execute(update(Job).where(Job.id == job.id).values(**changes.pop(0)))
            publish_change(settings.redis_url, job.id)  # as the worker does after each write
    response.close()

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


def test_a_quiet_stream_sends_keep_alive_comments(
    client: FlaskClient,
    session: Session,
    storage: Storage,
    sessions: sessionmaker[Session],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(job_streams, "KEEPALIVE_S", 0.2)
    job = make_job(session, storage, status=JobStatus.RUNNING, attempt=1)

    response = client.get(f"/v1/jobs/{job.id}/events", buffered=False)
    chunks = response.iter_encoded()
    first = next(chunks).decode()
    started = time.monotonic()
    quiet = next(chunks).decode()
    waited = time.monotonic() - started
    with sessions.begin() as other:
        other.execute(update(Job).where(Job.id == job.id).values(status=JobStatus.SUCCEEDED))
    publish_change(settings.redis_url, job.id)
    rest = b"".join(chunks).decode()
    response.close()

    assert [e["event"] for e in parse_events(first)] == ["running"]
    # Counted from the stream's read, a moment before this test got its first event.
    assert quiet == ": keep-alive\n\n" and waited >= 0.15
    assert [e["event"] for e in parse_events(rest)] == ["succeeded"]
