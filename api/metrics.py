"""GET /metrics: Prometheus text, derived at scrape time from the database and Redis.

The API runs as several gunicorn processes and the workers on other hosts, so in-process
counters would each see a slice. Every figure here is read, when scraped, from what all of them
share: the job rows (the truth: invariant 1, docs/internals/architecture.md) and the Redis queues.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import ColumnElement, Float, case, distinct, extract, func, select, type_coerce
from sqlalchemy.orm import Session

from api.problems import Problem
from shared.estimates import backlogs, workers_wanted
from shared.models import Job, JobStatus, utcnow
from shared.queue import maintenance_queue, queue_keys, render_queues, worker_classes

if TYPE_CHECKING:
    from api.db import Services

log = logging.getLogger(__name__)

# Seconds. A render takes from seconds (a small image) to hours (64 MP at 100 steps); a job
# waits from milliseconds (an idle worker) to hours (a backlog).
DURATION_BUCKETS = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    21600.0,
)
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 300, 900, 3600)
# A worker's throughput is measured on the jobs it finished this recently (at most this many
# rows read per scrape), so it follows the worker's present speed and the scrape stays cheap.
THROUGHPUT_WINDOW = timedelta(hours=1)
THROUGHPUT_MAX_JOBS = 1000
# How long a scrape waits for Celery workers to answer the broadcast that counts them.
INSPECT_TIMEOUT_S = 1.0


def register(app: Flask) -> None:
    """Serve GET /metrics from a registry of this app's own, to the holder of
    ONEIRO_METRICS_TOKEN when one is set (Prometheus's `authorization` credentials)."""
    registry = CollectorRegistry()
    registry.register(OneiroCollector(app.extensions["oneiro"]))
    token = app.extensions["oneiro"].settings.metrics_token

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus text exposition of jobs, queues and workers."""
        if token is not None:
            _require_token(token)
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _require_token(token: str) -> None:
    """401 problem+json unless the request carries `token` as its bearer credentials."""
    scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
    # Compared in constant time: the answer's timing must not spell the token out.
    if scheme.lower() != "bearer" or not hmac.compare_digest(sent.strip(), token):
        raise Problem(
            401,
            "Unauthorized",
            "/metrics needs the metrics token (ONEIRO_METRICS_TOKEN) as "
            "'Authorization: Bearer TOKEN'",
            headers={"WWW-Authenticate": 'Bearer realm="oneiro-metrics"'},
        )


class OneiroCollector(Collector):
    """Reads jobs, queues and workers when Prometheus scrapes; holds no counters itself."""

    def __init__(self, services: Services) -> None:
        self.services = services
        settings = services.settings
        self.queues = (*render_queues(settings), maintenance_queue(settings))
        # The broadcast's answers and when they came (monotonic seconds); see _worker_replies.
        self._replies: tuple[float, dict[str, Any] | None] | None = None
        self._broadcast_lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        """The metric families, computed now; a source that is down reports `_up 0`."""
        database_up = GaugeMetricFamily(
            "oneiro_database_up", "Whether the database answered this scrape's queries."
        )
        try:
            with self.services.sessions() as session:
                families = list(self._database_families(session))
        except Exception:
            log.warning("metrics: the database did not answer", exc_info=True)
            database_up.add_metric([], 0)
        else:
            database_up.add_metric([], 1)
            yield from families
        yield database_up
        yield from self._redis_families()

    def _database_families(self, session: Session) -> Iterator[Metric]:
        now = utcnow()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily(
            "oneiro_jobs",
            "Jobs whose row is now in each status. A gauge: a job moves on (queued to running), "
            "and a retry takes a failed, canceled or expired job back to queued.",
            labels=["status"],
        )
        for status, count in counts.items():
            jobs.add_metric([status.value], count)
        yield jobs
        yield CounterMetricFamily(
            "oneiro_jobs_submitted",
            "Jobs ever submitted (rows in the jobs table; a retry is the same job).",
            value=sum(counts.values()),
        )

        duration = HistogramMetricFamily(
            "oneiro_job_duration_seconds",
            "From the latest claim to the end (started_at to finished_at) of every finished "
            "job in the database, by final status; aggregated in SQL at scrape time.",
            labels=["status"],
        )
        ran = _seconds(session, Job.started_at, Job.finished_at)
        for status, total, buckets in _histogram(
            session,
            ran,
            DURATION_BUCKETS,
            Job.status,
            Job.finished_at.is_not(None),
            Job.started_at.is_not(None),
        ):
            duration.add_metric([status.value], buckets, total)
        yield duration

        wait = HistogramMetricFamily(
            "oneiro_job_queue_wait_seconds",
            "From submission to the latest claim (created_at to started_at) of every job ever "
            "claimed in the database; aggregated in SQL at scrape time.",
        )
        waited = _seconds(session, Job.created_at, Job.started_at)
        for _, total, buckets in _histogram(
            session, waited, WAIT_BUCKETS, None, Job.started_at.is_not(None)
        ):
            wait.add_metric([], buckets, total)
        yield wait

        rates = worker_throughput(session, now)
        yield self._throughput(rates)
        yield self._workers_wanted(session, rates)

        busy = session.scalar(
            select(func.count(distinct(Job.worker))).where(
                Job.status == JobStatus.RUNNING,
                Job.heartbeat_at >= now - timedelta(seconds=self.services.settings.lease_seconds),
            )
        )
        yield GaugeMetricFamily(
            "oneiro_workers_busy",
            "Worker processes rendering now: distinct workers of running jobs whose heartbeat "
            "is within the lease (ONEIRO_LEASE_SECONDS).",
            value=busy or 0,
        )

    def _workers_wanted(self, session: Session, rates: dict[str, float]) -> Metric:
        """Per worker class: the workers that would render its backlog within the target
        wait at the mean measured speed, at least those rendering now (shared/estimates.py)."""
        settings = self.services.settings
        family = GaugeMetricFamily(
            "oneiro_workers_wanted",
            "Workers each class's backlog wants: its queued work and what its running jobs "
            "have left (megapixel-steps) over the mean worker's measured megapixel-steps per "
            "second x ONEIRO_TARGET_WAIT_SECONDS, rounded up; never fewer than are rendering "
            "now; 1 for a backlog while no speed is measured. What an autoscaler sets the "
            "class's worker count to.",
            labels=["queue", "worker_class"],
        )
        rate = sum(rates.values()) / len(rates) if rates else None
        classes = {c.queue: c.name for c in worker_classes(settings)}
        for queue, backlog in backlogs(session, settings).items():
            wanted = workers_wanted(backlog, rate, settings.target_wait_seconds)
            family.add_metric([queue, classes[queue]], wanted)
        return family

    def _throughput(self, rates: dict[str, float]) -> Metric:
        """Megapixel-steps per second of each worker over the jobs it finished lately."""
        family = GaugeMetricFamily(
            "oneiro_worker_megapixel_steps_per_second",
            "Rendered megapixel-steps (every octave's pixels x steps, as ONEIRO_MAX_WORK "
            "counts them) per second of started_at to finished_at, over the first-attempt jobs "
            f"each worker finished in the last {THROUGHPUT_WINDOW.total_seconds():g}s (at most "
            f"{THROUGHPUT_MAX_JOBS} jobs); includes model loading and image coding.",
            labels=["worker"],
        )
        for worker, rate in sorted(rates.items()):
            family.add_metric([worker], rate)
        return family

    def _redis_families(self) -> Iterator[Metric]:
        redis_up = GaugeMetricFamily(
            "oneiro_redis_up", "Whether Redis answered this scrape's queue-length queries."
        )
        try:
            depths = self._queue_depths()
        except redis.RedisError:
            log.warning("metrics: Redis did not answer", exc_info=True)
            redis_up.add_metric([], 0)
            yield redis_up
            return
        redis_up.add_metric([], 1)
        yield redis_up
        depth = GaugeMetricFamily(
            "oneiro_queue_depth",
            "Messages waiting in each Celery queue in Redis, not yet delivered to a worker "
            "(a job may have more than one: duplicates are harmless).",
            labels=["queue"],
        )
        for queue, length in depths.items():
            depth.add_metric([queue], length)
        yield depth
        yield self._online_workers()

    def _queue_depths(self) -> dict[str, int]:
        settings = self.services.settings
        # A connection per scrape, closed after it: scrapes are seconds apart, and nothing is
        # left open in a process (or a test) that never scrapes again.
        with redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.enqueue_timeout,
            socket_connect_timeout=settings.enqueue_timeout,
        ) as client:
            return {queue: _queue_depth(client, queue) for queue in self.queues}

    def _online_workers(self) -> Metric:
        """Celery worker nodes consuming each queue that answer a broadcast, busy or idle."""
        family = GaugeMetricFamily(
            "oneiro_workers_online",
            "Celery worker nodes (idle or busy) consuming each queue that answered a broadcast "
            f"(`inspect active_queues`) within {INSPECT_TIMEOUT_S:g}s; the broadcast is sent at "
            "most once per ONEIRO_METRICS_CACHE_SECONDS and its answers reused in between.",
            labels=["queue"],
        )
        online = dict.fromkeys(self.queues, 0)
        replies = self._worker_replies()
        if replies is None:
            return family
        for queues in replies.values():
            for name in {queue["name"] for queue in queues} & online.keys():
                online[name] += 1
        for queue, count in online.items():
            family.add_metric([queue], count)
        return family

    def _worker_replies(self) -> dict[str, Any] | None:
        """The workers' answers to `inspect active_queues` (None if the broadcast failed),
        reused for metrics_cache_seconds.

        The broadcast waits up to INSPECT_TIMEOUT_S for answers, however few workers there are:
        without the cache every scrape would hold a request thread that long. The lock makes
        scrapes that come together wait for one broadcast rather than each send their own.
        """
        with self._broadcast_lock:
            ttl = self.services.settings.metrics_cache_seconds
            if self._replies is not None and time.monotonic() - self._replies[0] < ttl:
                return self._replies[1]
            replies: dict[str, Any] | None
            try:
                inspect = self.services.celery.control.inspect(timeout=INSPECT_TIMEOUT_S)
                replies = inspect.active_queues() or {}
            except Exception:
                log.warning("metrics: the worker broadcast failed", exc_info=True)
                replies = None
            self._replies = (time.monotonic(), replies)
            return replies


def _queue_depth(client: redis.Redis, queue: str) -> int:
    with client.pipeline(transaction=False) as pipe:
        for key in queue_keys(queue):
            pipe.llen(key)
        return sum(pipe.execute())


def worker_throughput(session: Session, now: datetime | None = None) -> dict[str, float]:
    """Megapixel-steps per second of each worker, over the first-attempt jobs it finished in
    the last THROUGHPUT_WINDOW (the metric, and the render-time estimate of a job)."""
    now = now or utcnow()
    rows = session.execute(
        select(Job.worker, Job.work, Job.started_at, Job.finished_at)
        .where(
            Job.status == JobStatus.SUCCEEDED,
            # A resumed attempt renders only what its checkpoint left, from a later
            # started_at; counting it would overstate the speed.
            Job.attempt == 1,
            Job.finished_at >= now - THROUGHPUT_WINDOW,
            Job.worker.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(THROUGHPUT_MAX_JOBS)
    ).all()
    jobs: dict[str, list[tuple[float, float]]] = {}
    for worker, job_work, started, finished in rows:
        if worker is None or started is None or finished is None:
            continue  # the query leaves none such out; the columns may hold them
        seconds = (finished - started).total_seconds()
        if seconds > 0:  # the stored work: every frame counted
            jobs.setdefault(worker, []).append((job_work, seconds))
    return {worker: _typical_rate(done) for worker, done in jobs.items()}


# A job that ran this many times slower than its worker's median job is left out of the
# worker's speed: one pathological job (a video whose frames outgrew what it was charged for
# ran 4 hours for 17 megapixel-steps) would otherwise set the speed every estimate and the
# autoscaling signal use, as its hours outweigh every other job's seconds.
OUTLIER_FACTOR = 10.0


def _typical_rate(done: list[tuple[float, float]]) -> float:
    """The speed (work over seconds) of a worker's jobs (work, seconds each), those far slower
    than its median job's left out."""
    rates = sorted(work / seconds for work, seconds in done)
    middle = len(rates) // 2
    median = rates[middle] if len(rates) % 2 else (rates[middle - 1] + rates[middle]) / 2
    kept = [(w, s) for w, s in done if w / s * OUTLIER_FACTOR >= median]
    return sum(w for w, _ in kept) / sum(s for _, s in kept)


def _seconds(session: Session, start: Any, end: Any) -> ColumnElement[float]:
    """SQL for the seconds between two timestamp columns, on SQLite and PostgreSQL."""
    if session.get_bind().dialect.name == "sqlite":
        # SQLite keeps timestamps as text; julianday reads it as (fractional) days.
        return (func.julianday(end) - func.julianday(start)) * 86400.0
    return type_coerce(extract("epoch", end - start), Float)


def _histogram(
    session: Session,
    seconds: ColumnElement[float],
    bounds: Iterable[float],
    label: Any,
    *where: ColumnElement[bool],
) -> Iterator[tuple[Any, float, list[tuple[str, float]]]]:
    """(label, sum, cumulative buckets ending in +Inf) per label value, counted by the database.

    One aggregate query: no job row leaves the database, however many there are.
    """
    bounds = list(bounds)
    columns: list[ColumnElement[Any]] = [
        func.count(),
        func.coalesce(func.sum(seconds), 0.0),
        *(func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in bounds),
    ]
    query = select(*columns).where(*where)
    if label is not None:
        query = query.add_columns(label).group_by(label)
    for row in session.execute(query):
        count, total, *cumulative = row[: len(bounds) + 2]
        buckets = [
            (floatToGoString(bound), float(n)) for bound, n in zip(bounds, cumulative, strict=True)
        ]
        buckets.append(("+Inf", float(count)))
        yield (row[-1] if label is not None else None), float(total), buckets
