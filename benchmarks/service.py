"""Service benchmark: the API under gunicorn and a dry-run worker, on real PostgreSQL and Redis.

    .venv/bin/python benchmarks/service.py               # 10 s per phase
    .venv/bin/python benchmarks/service.py --seconds 30

Starts what `make run` starts (gunicorn with the same command, a Celery worker) against a fresh
PostgreSQL database (SQLite when none answers at ONEIRO_TEST_POSTGRES_URL) and the Redis at
REDIS_URL (started when none answers). The worker runs with ONEIRO_DRY_RUN, so a job costs the
service's work and none of the engine's. Measured, open loop (requests leave on a fixed
schedule, latency counts from the scheduled moment, so a stall is not hidden by sending less):

- submit: POST /v1/jobs (a small PNG) at 100 requests per second;
- poll: GET /v1/jobs/{id} at 200 requests per second;
- pickup: with the worker idle, from the job's commit (created_at) to running (started_at),
  one job at a time.

Baseline: GET /healthz at the same rate on the same server, in the same run; its ratio shows
what the route costs over gunicorn, the network stack and the load generator themselves.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from PIL import Image  # noqa: E402

from shared.db import create_db_engine, create_session_factory  # noqa: E402
from shared.launcher import api_command, migrate_command, worker_command  # noqa: E402
from shared.localredis import redis_answers, start_redis  # noqa: E402
from shared.models import Job, JobStatus  # noqa: E402
from shared.tenants import create_key  # noqa: E402

POSTGRES_ADMIN_URL = os.environ.get(
    "ONEIRO_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TARGETS = {"submit": 50.0, "poll": 20.0, "pickup": 100.0}  # p99 ms on this 2-core machine


@contextmanager
def database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards; SQLite when PostgreSQL is away."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"oneiro_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError:
        admin.dispose()
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/oneiro.db"
        return
    try:
        yield sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def redis_server(tmp: Path) -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if redis_answers(url):
        yield url
        return
    server = start_redis(6390, tmp / "redis")
    try:
        yield "redis://127.0.0.1:6390/0"
    finally:
        server.terminate()


@contextmanager
def service(database_url: str, redis_url: str, tmp: Path) -> Iterator[tuple[str, str]]:
    """gunicorn and a dry-run worker; yields (base URL, API key)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "ONEIRO_DATA_DIR": str(tmp / "data"),
        "ONEIRO_QUEUE": f"oneiro-bench-{uuid.uuid4().hex[:8]}",
        "ONEIRO_DRY_RUN": "true",
        "ONEIRO_RATE_LIMIT": "1000000/minute",
        "ONEIRO_MAX_ACTIVE_JOBS": "1000000",
        "ONEIRO_LOG_LEVEL": "WARNING",
        "ONEIRO_PROGRESS_INTERVAL": "1.0",
    }
    subprocess.run(migrate_command(), cwd=ROOT, env=env, check=True, capture_output=True)
    engine = create_db_engine(database_url)
    with create_session_factory(engine)() as session:
        key = create_key(session, "bench").key
    engine.dispose()
    bind = "127.0.0.1:8765"
    logs = (tmp / "service.log").open("wb")
    processes = [
        subprocess.Popen(api_command(bind), cwd=ROOT, env=env, stdout=logs, stderr=logs),
        subprocess.Popen(
            [*worker_command(env["ONEIRO_QUEUE"]), "--without-mingle", "--without-gossip"],
            cwd=ROOT,
            env=env,
            stdout=logs,
            stderr=logs,
        ),
    ]
    url = f"http://{bind}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield url, key
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        logs.close()


def open_loop(rate: float, seconds: float, send: Callable[[requests.Session], int]) -> dict:
    """Call `send` `rate` times a second for `seconds`, each at its scheduled moment; latency
    counts from that moment. Returns latencies (ms), errors and the rate achieved."""
    local = threading.local()
    latencies: list[float] = []
    errors: list[int] = []
    total = int(rate * seconds)
    start = time.perf_counter() + 0.1

    def one(i: int) -> None:
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if not hasattr(local, "http"):
            local.http = requests.Session()
        status = send(local.http)
        latencies.append((time.perf_counter() - due) * 1000)
        if not 200 <= status < 300:
            errors.append(status)

    with ThreadPoolExecutor(max_workers=64) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - start
    return {"latencies": latencies, "errors": errors, "rate": total / elapsed}


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "max": max(values)}


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--pickups", type=int, default=30, help="jobs timed one at a time")
    args = parser.parse_args()

    image = png()
    with tempfile.TemporaryDirectory() as tmp_dir, database() as database_url:
        tmp = Path(tmp_dir)
        with redis_server(tmp) as redis_url, service(database_url, redis_url, tmp) as (url, key):
            auth = {"Authorization": f"Bearer {key}"}
            submitted: list[str] = []

            def healthz(http: requests.Session) -> int:
                return http.get(f"{url}/healthz", timeout=10).status_code

            def submit(http: requests.Session) -> int:
                answer = http.post(
                    f"{url}/v1/jobs",
                    headers=auth,
                    files={"image": ("bench.png", image, "image/png")},
                    data={"params": json.dumps({"steps": 1, "octaves": 1, "seed": 1})},
                    timeout=10,
                )
                if answer.status_code == 202:
                    submitted.append(answer.json()["id"])
                return answer.status_code

            def poll(http: requests.Session) -> int:
                job_id = submitted[len(submitted) // 2]
                return http.get(f"{url}/v1/jobs/{job_id}", headers=auth, timeout=10).status_code

            open_loop(50, 1, healthz)  # warm-up: connections, imports, first queries
            open_loop(20, 1, submit)
            rows = []
            for name, rate, send in (("submit", 100, submit), ("poll", 200, poll)):
                baseline = open_loop(rate, args.seconds, healthz)
                measured = open_loop(rate, args.seconds, send)
                rows.append((name, rate, baseline, measured))

            # Let the worker drain what the submit phase queued, then time pickups one by one.
            engine = create_db_engine(database_url)
            sessions = create_session_factory(engine)
            pending = [JobStatus.QUEUED, JobStatus.RUNNING]
            while True:
                with sessions() as session:
                    left = session.scalar(
                        sa.select(sa.func.count()).select_from(Job).where(Job.status.in_(pending))
                    )
                if not left:
                    break
                time.sleep(0.5)
            pickups = []
            http = requests.Session()
            for _ in range(args.pickups):
                before = len(submitted)
                submit(http)
                job_id = uuid.UUID(submitted[before])
                while True:
                    with sessions() as session:
                        job = session.get_one(Job, job_id)
                        if job.started_at is not None and job.status == JobStatus.SUCCEEDED:
                            pickups.append((job.started_at - job.created_at).total_seconds() * 1e3)
                            break
                    time.sleep(0.02)
                time.sleep(0.2)  # the worker idle again, as an idle worker waits for work
            engine.dispose()

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or ''}")
    print(f"database: {database_url.split('://')[0]}, {args.seconds:g} s per phase, open loop\n")
    header = f"{'phase':<22}{'rate/s':>8}{'p50':>8}{'p95':>8}{'p99':>8}{'max':>8}{'errors':>8}"
    print(header + "   (latency ms)")
    for name, rate, baseline, measured in rows:
        print(f"{name} at {rate}/s:")
        for label, result in (("  /healthz (baseline)", baseline), (f"  {name}", measured)):
            p = percentiles(result["latencies"])
            print(
                f"{label:<22}{result['rate']:>8.1f}{p['p50']:>8.1f}{p['p95']:>8.1f}"
                f"{p['p99']:>8.1f}{p['max']:>8.1f}{len(result['errors']):>8}"
            )
        ratio = (
            percentiles(measured["latencies"])["p99"] / percentiles(baseline["latencies"])["p99"]
        )
        p99 = percentiles(measured["latencies"])["p99"]
        verdict = "met" if p99 < TARGETS[name] else "MISSED"
        print(
            f"  {name} p99 / baseline p99 = {ratio:.2f}x; "
            f"target p99 < {TARGETS[name]:g} ms: {verdict}"
        )
    p = percentiles(pickups)
    verdict = "met" if p["p99"] < TARGETS["pickup"] else "MISSED"
    print(
        f"\npickup, commit to running, {len(pickups)} jobs one at a time: p50 {p['p50']:.1f} ms, "
        f"p95 {p['p95']:.1f}, max {p['max']:.1f}; target < {TARGETS['pickup']:g} ms: {verdict}"
    )


if __name__ == "__main__":
    main()
