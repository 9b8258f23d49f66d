"""Webhooks: signed JSON deliveries of a job's events, retried with back-off by a real Celery
worker, with a stable event id; targets on our own network are refused."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import STDOUT
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from shared.launcher import maintenance_command
from shared.models import Job, JobStatus
from shared.queue import webhook_queue
from shared.settings import Settings
from shared.storage import Storage
from shared.webhooks import (
    SIGNATURE_HEADER,
    WebhookRefused,
    check_target,
    sign,
    verify_signature,
)
from tests.conftest import ROOT
from tests.test_api import assert_problem, stored_files, submit
from tests.utils import authed_client, image_bytes, process_env, tenant_named, wait_for
from worker.jobs import run_job
from worker.runtime import Runtime


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/hook",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.5/",
        "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",  # carrier-grade NAT
    ],
)
def test_targets_on_our_own_network_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused, match="public addresses only"):
        check_target(url)
    check_target(url, allow_private=True)  # unless the operator allows them


def test_public_targets_pass_and_unresolvable_ones_do_not() -> None:
    check_target("https://93.184.215.14/hook")  # an address literal: no lookup needed
    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_target("http://no-such-host.invalid/hook")


def test_signatures_verify_and_tampering_or_age_do_not() -> None:
    body = b'{"id": "1"}'
    header = sign("secret", body)
    assert verify_signature("secret", body, header)
    assert not verify_signature("other", body, header)
    assert not verify_signature("secret", body + b" ", header)
    assert not verify_signature("secret", body, sign("secret", body, int(time.time()) - 3600))
    assert not verify_signature("secret", body, "garbage")


def test_a_job_asking_for_a_private_target_is_refused_and_nothing_written(
    client: FlaskClient, session: Session, settings: Settings
) -> None:
    webhook = json.dumps({"url": "http://127.0.0.1:9/hook"})
    body = assert_problem(submit(client, image_bytes(), webhook=webhook), 422)
    assert body["errors"][0]["field"] == "webhook.url"
    assert "127.0.0.1" in body["errors"][0]["message"]
    bad_event = json.dumps({"url": "https://93.184.215.14/", "events": ["finished"]})
    body = assert_problem(submit(client, image_bytes(), webhook=bad_event), 422)
    assert body["errors"][0]["field"] == "webhook.events.0"
    unknown = json.dumps({"url": "https://93.184.215.14/", "secret": "x"})
    assert assert_problem(submit(client, image_bytes(), webhook=unknown), 422)
    assert session.scalar(select(func.count()).select_from(Job)) == 0
    assert stored_files(settings) == []


class Receiver:
    """An HTTP server that answers 500 to the first `failures` deliveries of each event."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deliveries: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers["Oneiro-Event-Id"]
                tries = sum(1 for d in receiver.deliveries if d["id"] == event_id)
                status = 500 if tries < receiver.failures else 204
                receiver.deliveries.append(
                    {
                        "id": event_id,
                        "event": self.headers["Oneiro-Event"],
                        "signature": self.headers[SIGNATURE_HEADER],
                        "body": body,
                        "status": status,
                        "at": time.monotonic(),
                    }
                )
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/oneiro"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if d["status"] == 204]


@pytest.fixture
def hooked(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings that allow loopback targets and retry fast, and a real maintenance worker (the
    one `make run` starts) delivering webhooks with them."""
    hooked = settings.model_copy(
        update={
            "webhook_allow_private": True,
            "webhook_backoff": 0.3,
            "webhook_progress_interval": 0.0,
        }
    )
    env = process_env(hooked, ONEIRO_WEBHOOK_ALLOW_PRIVATE="true", ONEIRO_WEBHOOK_BACKOFF="0.3")
    log = (tmp_path / "maintenance.log").open("wb")
    worker = subprocess.Popen(
        [*maintenance_command(hooked, tmp_path / "beat-schedule"), "--without-mingle"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=STDOUT,
    )
    try:
        yield hooked
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()
        redis.Redis.from_url(hooked.redis_url).delete(webhook_queue(hooked))


def test_events_are_signed_retried_with_back_off_and_keep_their_id(
    hooked: Settings,
    sessions: sessionmaker[Session],
    session: Session,
    storage: Storage,
    receivers: Any,
) -> None:
    receiver = receivers(failures=2)
    app = create_app(hooked)
    client = authed_client(app)
    webhook = json.dumps({"url": receiver.url})
    job_id = uuid.UUID(
        submit(client, image_bytes(), {"steps": 3, "octaves": 2}, webhook=webhook).get_json()["id"]
    )
    runtime = Runtime(settings=hooked, sessions=sessions, storage=storage, name="w")
    assert run_job(job_id, runtime) == JobStatus.SUCCEEDED

    def all_delivered() -> list[dict[str, Any]] | None:
        delivered = receiver.delivered()
        tried = {d["id"] for d in receiver.deliveries}
        done = {d["event"] for d in delivered} >= {"started", "completed"}
        return delivered if done and {d["id"] for d in delivered} == tried else None

    # Deliveries run four at a time and retries interleave: events may arrive out of order
    # (each carries the job's state and its time; README says so).
    delivered = wait_for(all_delivered, 60, "every event to be delivered")
    events = sorted(d["event"] for d in delivered)
    assert events.count("started") == 1 and events.count("completed") == 1
    assert events.count("progress") >= 2
    secret = tenant_named(session).webhook_secret
    for d in receiver.deliveries:
        assert verify_signature(secret, d["body"], d["signature"])
        assert json.loads(d["body"])["id"] == d["id"]
    # Each event was tried three times under one id, the gaps growing (0.3 s, then 0.6 s).
    for d in delivered:
        tries = [t for t in receiver.deliveries if t["id"] == d["id"]]
        assert [t["status"] for t in tries] == [500, 500, 204]
        first_gap, second_gap = (b["at"] - a["at"] for a, b in zip(tries, tries[1:], strict=False))
        assert first_gap > 0.25 and second_gap > 0.55
    completed = next(json.loads(d["body"]) for d in delivered if d["event"] == "completed")
    assert completed["type"] == "completed"
    assert completed["job"]["status"] == "succeeded"
    assert completed["job"]["result_url"] == f"/v1/jobs/{job_id}/result"
    fractions = [
        json.loads(d["body"])["job"]["progress"]["fraction"]
        for d in delivered
        if d["event"] == "progress"
    ]
    assert len(set(fractions)) == len(fractions) and all(0 < f <= 1 for f in fractions)
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()


def test_a_canceled_job_sends_completed_and_only_the_events_asked_for(
    hooked: Settings, client_app: Flask, receivers: Any
) -> None:
    receiver = receivers(failures=0)
    client = authed_client(client_app)
    webhook = json.dumps({"url": receiver.url, "events": ["completed"]})
    job_id = submit(client, image_bytes(), webhook=webhook).get_json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    delivered = wait_for(receiver.delivered, 30, "the completed event")
    time.sleep(0.5)  # nothing else follows
    assert [d["event"] for d in receiver.deliveries] == ["completed"]
    assert json.loads(delivered[0]["body"])["job"]["status"] == "canceled"


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []
    yield lambda failures: made.append(Receiver(failures)) or made[-1]
    for receiver in made:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.fixture
def client_app(hooked: Settings) -> Iterator[Flask]:
    app = create_app(hooked)
    yield app
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()
