"""GET /metrics: figures read at scrape time from the real database and the real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from api import create_app
from api.metrics import INSPECT_TIMEOUT_S
from shared.models import JobStatus, utcnow
from shared.queue import MAINTAIN_TASK, RENDER_TASK, create_celery, maintenance_queue
from shared.settings import Settings
from shared.storage import Storage
from shared.transitions import send_job
from tests.utils import make_job
from worker.maintenance import relay_queued_jobs

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: FlaskClient) -> Samples:
    """Every sample of one scrape, by name and labels, parsed as Prometheus would."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def maintenance_keys(settings: Settings, redis_url: str) -> Iterator[None]:
    """The maintenance queue of this test's queue is left empty after it."""
    yield
    client = redis.Redis.from_url(redis_url)
    queue = maintenance_queue(settings)
    client.delete(queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9)))
    client.close()


def test_jobs_by_status_and_submitted(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    for status, count in [
        (JobStatus.QUEUED, 3),
        (JobStatus.RUNNING, 1),
        (JobStatus.SUCCEEDED, 2),
        (JobStatus.FAILED, 1),
    ]:
        for _ in range(count):
            make_job(session, storage, status=status)

    samples = scrape(client)

    assert value(samples, "oneiro_database_up") == 1
    assert value(samples, "oneiro_jobs_submitted_total") == 7
    for status, count in {
        "queued": 3,
        "running": 1,
        "succeeded": 2,
        "failed": 1,
        "canceled": 0,
    }.items():
        assert value(samples, "oneiro_jobs", status=status) == count


def test_queue_depth_is_what_waits_in_redis(
    settings: Settings, client: FlaskClient, redis_url: str, maintenance_keys: None
) -> None:
    celery = create_celery(settings)
    for _ in range(3):
        celery.send_task(RENDER_TASK, args=["00000000-0000-0000-0000-000000000000"])
    # A message sent with a priority waits in a list of its own; it is still in the queue.
    celery.send_task(RENDER_TASK, args=["00000000-0000-0000-0000-000000000000"], priority=9)
    celery.send_task(MAINTAIN_TASK)
    celery.close()
    client_redis = redis.Redis.from_url(redis_url)
    in_redis = sum(
        client_redis.llen(key)
        for key in (settings.queue, *(f"{settings.queue}\x06\x16{s}" for s in (3, 6, 9)))
    )
    client_redis.close()

    samples = scrape(client)

    assert in_redis == 4
    assert value(samples, "oneiro_redis_up") == 1
    assert value(samples, "oneiro_queue_depth", queue=settings.queue) == 4
    assert value(samples, "oneiro_queue_depth", queue=maintenance_queue(settings)) == 1
    # No worker consumes this test's queues.
    assert value(samples, "oneiro_workers_online", queue=settings.queue) == 0


def test_duration_and_queue_wait_histograms_count_the_jobs(
    client: FlaskClient, session: Session, storage: Storage
) -> None:
    t0 = utcnow() - timedelta(hours=3)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    # (status, waited before its claim, ran for): None where the job never got that far.
    for status, waited, ran in [
        (JobStatus.SUCCEEDED, 2.0, 3.0),
        (JobStatus.SUCCEEDED, 10.0, 40.0),
        (JobStatus.FAILED, 700.0, 100.0),
        (JobStatus.RUNNING, 0.3, None),
        (JobStatus.CANCELED, None, None),  # canceled while queued: never claimed
        (JobStatus.QUEUED, None, None),
    ]:
        started = None if waited is None else at(waited)
        finished = at(waited + ran) if waited is not None and ran is not None else None
        if status == JobStatus.CANCELED:
            finished = at(5)
        make_job(
            session,
            storage,
            status=status,
            created_at=t0,
            started_at=started,
            finished_at=finished,
        )

    samples = scrape(client)

    duration = "oneiro_job_duration_seconds"
    assert value(samples, f"{duration}_count", status="succeeded") == 2
    assert value(samples, f"{duration}_sum", status="succeeded") == pytest.approx(43, abs=1e-3)
    assert value(samples, f"{duration}_bucket", status="succeeded", le="1.0") == 0
    assert value(samples, f"{duration}_bucket", status="succeeded", le="5.0") == 1
    assert value(samples, f"{duration}_bucket", status="succeeded", le="30.0") == 1
    assert value(samples, f"{duration}_bucket", status="succeeded", le="60.0") == 2
    assert value(samples, f"{duration}_bucket", status="succeeded", le="+Inf") == 2
    assert value(samples, f"{duration}_count", status="failed") == 1
    assert value(samples, f"{duration}_sum", status="failed") == pytest.approx(100, abs=1e-3)
    assert value(samples, f"{duration}_bucket", status="failed", le="60.0") == 0
    assert value(samples, f"{duration}_bucket", status="failed", le="120.0") == 1
    # The job canceled while queued never ran: it has no duration.
    assert (f"{duration}_count", frozenset({("status", "canceled")})) not in samples

    wait = "oneiro_job_queue_wait_seconds"
    assert value(samples, f"{wait}_count") == 4
    assert value(samples, f"{wait}_sum") == pytest.approx(712.3, abs=1e-3)
    for le, count in {"0.1": 0, "0.5": 1, "5.0": 2, "15.0": 3, "300.0": 3, "900.0": 4}.items():
        assert value(samples, f"{wait}_bucket", le=le) == count, le


def test_worker_throughput_and_busy_workers(
    client: FlaskClient, session: Session, storage: Storage, settings: Settings
) -> None:
    now = utcnow()
    params = {"steps": 2, "octaves": 2, "seed": 7}  # on make_job's 96 x 64 image

    def finished(worker: str, seconds: float, ago: timedelta, **fields: object) -> None:
        end = now - ago
        make_job(
            session,
            storage,
            status=JobStatus.SUCCEEDED,
            worker=worker,
            attempt=fields.pop("attempt", 1),
            started_at=end - timedelta(seconds=seconds),
            finished_at=end,
            params=fields.pop("params", params),
        )

    finished("w1", 2.0, timedelta(minutes=5))
    finished("w1", 4.0, timedelta(minutes=1))
    finished("w1", 0.5, timedelta(minutes=1), attempt=2)  # resumed: only part of the work
    finished("w2", 1.0, timedelta(hours=2))  # outside the window
    # VGG19 renders 48 x 32 (InceptionV3 would raise it to 112 x 75, as it does the 96 x 64).
    finished("w3", 1.0, timedelta(minutes=1), params={**params, "max_dim": 48, "model": "vgg19"})

    lease = timedelta(seconds=settings.lease_seconds)
    for worker, beat in [
        ("a", now),
        ("a", now - lease / 2),
        ("b", now - 2 * lease),  # silent past its lease: presumed dead
        ("c", now - timedelta(seconds=1)),
    ]:
        make_job(session, storage, status=JobStatus.RUNNING, worker=worker, heartbeat_at=beat)

    samples = scrape(client)

    speed = "oneiro_worker_megapixel_steps_per_second"
    # Two jobs of two octaves raised to 112 x 75 (InceptionV3's least side), two steps each.
    assert value(samples, speed, worker="w1") == pytest.approx(2 * 112 * 75 * 2 * 2 / 1e6 / 6.0)
    assert value(samples, speed, worker="w3") == pytest.approx(48 * 32 * 2 * 2 / 1e6 / 1.0)
    assert (speed, frozenset({("worker", "w2")})) not in samples
    assert value(samples, "oneiro_workers_busy") == 2


def test_a_redis_that_is_down_leaves_the_database_figures(
    settings: Settings, session: Session, storage: Storage, dead_port: int
) -> None:
    make_job(session, storage)
    app = create_app(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{dead_port}/0"}))

    samples = scrape(app.test_client())
    app.extensions["oneiro"].engine.dispose()
    app.extensions["oneiro"].celery.close()

    assert value(samples, "oneiro_redis_up") == 0
    assert "oneiro_queue_depth" not in names(samples)
    assert value(samples, "oneiro_jobs", status="queued") == 1


def test_the_queue_depth_matches_the_backlog_through_relay_rounds(
    settings: Settings, client: FlaskClient, session: Session, storage: Storage
) -> None:
    # Issue 10.8: with no worker the relay used to add a message per waiting job every round,
    # so the depth overstated the backlog (10 jobs became 39 messages).
    celery = create_celery(settings)
    for _ in range(10):
        send_job(session, celery, make_job(session, storage).id, settings.queue)
    for round_ in range(1, 4):
        later = utcnow() + timedelta(seconds=round_ * (settings.relay_after + 1))
        relay_queued_jobs(session, celery, settings, now=later)
    celery.close()

    samples = scrape(client)

    assert value(samples, "oneiro_queue_depth", queue=settings.queue) == 10
    assert value(samples, "oneiro_jobs", status="queued") == 10


def test_scrapes_share_one_worker_broadcast_until_the_cache_expires(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 10.10: each scrape paid a broadcast that waits a second for worker answers.
    ttl = 3.0
    app = create_app(settings.model_copy(update={"metrics_cache_seconds": ttl}))
    control = app.extensions["oneiro"].celery.control
    broadcasts: list[str] = []
    real = control.broadcast

    def counted(command: str, *args: object, **kwargs: object) -> object:
        broadcasts.append(command)
        return real(command, *args, **kwargs)

    monkeypatch.setattr(control, "broadcast", counted)
    try:
        started = time.monotonic()
        scrape(app.test_client())
        first = time.monotonic() - started
        started = time.monotonic()
        scrape(app.test_client())
        second = time.monotonic() - started
        assert broadcasts == ["active_queues"]
        # No worker answers this test's broadcast, so it waits its whole timeout; the cached
        # scrape does not.
        assert first >= INSPECT_TIMEOUT_S > second

        time.sleep(ttl + 0.1)
        # Expired: four scrapers arriving together make one broadcast between them.
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: scrape(app.test_client()), range(4)))
        assert broadcasts == ["active_queues"] * 2
    finally:
        app.extensions["oneiro"].engine.dispose()
        app.extensions["oneiro"].celery.close()


def test_with_a_metrics_token_only_its_holder_scrapes(settings: Settings) -> None:
    # Issue 23.10: /metrics answered anyone on the API port.
    token = "a-metrics-token-of-some-length"
    app = create_app(settings.model_copy(update={"metrics_token": token}))
    client = app.test_client()

    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": token},
    ):
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.content_type == "application/problem+json"
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        assert "ONEIRO_METRICS_TOKEN" in answer.get_json()["detail"]
    answer = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and b"oneiro_jobs" in answer.data
    app.extensions["oneiro"].engine.dispose()
