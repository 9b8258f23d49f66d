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

Workers run on GPU machines of their own, so by default the worker starts only after the submit
and poll phases (it then drains their jobs before the pickup phase); --worker-during-load runs
it throughout, on the same two cores as the API, PostgreSQL, Redis and the load generator.

Baseline: GET /healthz at the same rate on the same server, in the same run; its ratio shows
what the route costs over gunicorn, the network stack and the load generator themselves.
"""

from __future__ import annotations

import argparse
import http.client
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
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from PIL import Image  # noqa: E402

from dev.launcher import api_command, migrate_command, worker_command  # noqa: E402
from dev.localredis import start_redis  # noqa: E402
from shared.db import create_db_engine, create_session_factory  # noqa: E402
from shared.models import Job, JobStatus  # noqa: E402
from shared.queue import redis_answers  # noqa: E402
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


class Service:
    """gunicorn serving the API, and a dry-run worker started on demand."""

    def __init__(self, url: str, key: str, start_worker: Callable[[], None]) -> None:
        self.url, self.key, self.start_worker = url, key, start_worker


@contextmanager
def service(database_url: str, redis_url: str, tmp: Path) -> Iterator[Service]:
    """gunicorn (the command `make run` uses) and, once asked for, a dry-run worker."""
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
    processes = [subprocess.Popen(api_command(bind), cwd=ROOT, env=env, stdout=logs, stderr=logs)]

    def start_worker() -> None:
        command = [*worker_command(env["ONEIRO_QUEUE"]), "--without-mingle", "--without-gossip"]
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=logs, stderr=logs))

    url = f"http://{bind}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{url}/healthz", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        yield Service(url, key, start_worker)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        logs.close()


class Client:
    """One keep-alive HTTP/1.1 connection: the least a load generator can spend per request,
    so that on a 2-core machine the cores go to the service, not to the client."""

    def __init__(self, url: str) -> None:
        parsed = urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=10)

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, bytes]:
        try:
            self.connection.request(method, path, body=body, headers=headers or {})
            answer = self.connection.getresponse()
            return answer.status, answer.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
            return 599, b""


def multipart(fields: dict[str, tuple[str, str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body, built once: {name: (filename, content type, data)}."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, kind, data) in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        head += f'; filename="{filename}"' if filename else ""
        parts.append(f"{head}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), boundary


def open_loop(rate: float, seconds: float, url: str, send: Callable[[Client], int]) -> dict:
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
        if not hasattr(local, "client"):
            local.client = Client(url)
        status = send(local.client)
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
    parser.add_argument(
        "--worker-during-load",
        action="store_true",
        help="run the dry-run worker during the submit and poll phases too (on the same cores)",
    )
    args = parser.parse_args()

    image = png()
    with tempfile.TemporaryDirectory() as tmp_dir, database() as database_url:
        tmp = Path(tmp_dir)
        with redis_server(tmp) as redis_url, service(database_url, redis_url, tmp) as running:
            url, auth = running.url, {"Authorization": f"Bearer {running.key}"}
            if args.worker_during_load:
                running.start_worker()
            submitted: list[str] = []
            params = json.dumps({"steps": 1, "octaves": 1, "seed": 1}).encode()
            body, boundary = multipart(
                {
                    "image": ("bench.png", "image/png", image),
                    "params": ("", "application/json", params),
                }
            )
            form = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}

            def healthz(client: Client) -> int:
                return client.call("GET", "/healthz")[0]

            def submit(client: Client) -> int:
                status, data = client.call("POST", "/v1/jobs", body, form)
                if status == 202:
                    submitted.append(json.loads(data)["id"])
                return status

            def poll(client: Client) -> int:
                job_id = submitted[len(submitted) // 2]
                return client.call("GET", f"/v1/jobs/{job_id}", headers=auth)[0]

            open_loop(50, 1, url, healthz)  # warm-up: connections, imports, first queries
            open_loop(20, 1, url, submit)
            rows = []
            for name, rate, send in (("submit", 100, submit), ("poll", 200, poll)):
                baseline = open_loop(rate, args.seconds, url, healthz)
                measured = open_loop(rate, args.seconds, url, send)
                rows.append((name, rate, baseline, measured))

            # Let the worker drain what the submit phase queued, then time pickups one by one.
            if not args.worker_during_load:
                running.start_worker()
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
            client = Client(url)
            for _ in range(args.pickups):
                before = len(submitted)
                submit(client)
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
    print(
        f"database: {database_url.split('://')[0]}, {args.seconds:g} s per phase, open loop, "
        f"worker {'running' if args.worker_during_load else 'stopped'} during submit and poll\n"
    )
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
