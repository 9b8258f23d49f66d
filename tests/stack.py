"""A running Oneiro for tests that act as a client: migrations, gunicorn and one Celery worker
with random weights, started as `make run` starts them (the pattern of tests/test_e2e.py)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import STDOUT

import redis
import requests

from dev.launcher import api_command, migrate_command, worker_command
from shared.settings import Settings, load_settings
from tests.conftest import ROOT
from tests.utils import http_answers, listening_port, new_key, process_env, wait_for


@dataclass
class Stack:
    """Where the API answers, and a key of the test tenant for it."""

    url: str
    settings: Settings
    key: str
    api_log: Path
    worker_log: Path

    @property
    def database_url(self) -> str:
        return self.settings.database_url

    def worker_lines(self, needle: str) -> list[str]:
        """The worker's log lines that contain `needle`."""
        return [line for line in self.worker_log.read_text().splitlines() if needle in line]

    def http(self) -> requests.Session:
        """A session that calls with the stack's key."""
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {self.key}"
        return session

    def job(self, job_id: str) -> dict:
        """The job as the API shows it."""
        with self.http() as http:
            response = http.get(f"{self.url}/v1/jobs/{job_id}", timeout=10)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def wait_until_ended(self, job_id: str, timeout: float = 180) -> dict:
        """Poll the job until it is succeeded, failed or canceled; its last state."""
        return wait_for(  # type: ignore[no-any-return]
            lambda: (
                (job := self.job(job_id))["status"] in ("succeeded", "failed", "canceled") and job
            ),
            timeout,
            f"job {job_id} to end",
            every=0.2,
        )


@contextlib.contextmanager
def running_stack(tmp: Path, redis_url: str, database_url: str | None = None) -> Iterator[Stack]:
    """Migrate the database (SQLite in `tmp` unless given), serve the API, run one worker."""
    database_url = database_url or f"sqlite:///{tmp / 'oneiro.db'}"
    settings = load_settings(
        data_dir=tmp / "data",
        database_url=database_url,
        redis_url=redis_url,
        queue=f"oneiro-client-{uuid.uuid4().hex[:12]}",
    )
    # Frequent progress and previews, so that a short test render shows several of each.
    env = process_env(settings, ONEIRO_PROGRESS_INTERVAL="0.2", ONEIRO_PREVIEW_INTERVAL="0.5")
    subprocess.run(migrate_command(), cwd=ROOT, env=env, check=True, capture_output=True)
    api_log, worker_log = tmp / "api.log", tmp / "worker.log"
    with api_log.open("wb") as api_out, worker_log.open("wb") as worker_out:
        api = subprocess.Popen(
            [*api_command("127.0.0.1:0"), "--access-logfile", "-"],
            cwd=ROOT,
            env=env,
            stdout=api_out,
            stderr=STDOUT,
        )
        worker = subprocess.Popen(
            [
                *worker_command(settings.queue),
                "--without-mingle",
                "--without-gossip",
                "--hostname",
                f"client-{uuid.uuid4().hex[:6]}@%h",
            ],
            cwd=ROOT,
            env=env,
            stdout=worker_out,
            stderr=STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{listening_port(api_log, api)}"
            wait_for(lambda: http_answers(f"{url}/healthz"), 30, "the API")
            yield Stack(url, settings, new_key(database_url), api_log, worker_log)
        finally:
            for process in (api, worker):
                process.terminate()
            for process in (api, worker):
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            # Celery's queue and its priority siblings, as tests/conftest.py's queue_name does.
            queue = settings.queue
            with redis.Redis.from_url(redis_url) as client:
                client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))


@contextlib.contextmanager
def serving_api(settings: Settings, log: Path, **extra: str) -> Iterator[str]:
    """gunicorn serving the API alone (as `make run` starts it) on the (migrated) database of
    `settings`, with `extra` ONEIRO_* variables; yields its URL. For tests that play the worker
    themselves."""
    env = process_env(settings, **extra)
    with log.open("wb") as out:
        api = subprocess.Popen(
            api_command("127.0.0.1:0"), cwd=ROOT, env=env, stdout=out, stderr=STDOUT
        )
        try:
            url = f"http://127.0.0.1:{listening_port(log, api)}"
            wait_for(lambda: http_answers(f"{url}/healthz"), 30, "the API")
            yield url
        finally:
            api.terminate()
            try:
                api.wait(timeout=30)
            except subprocess.TimeoutExpired:
                api.kill()
                api.wait()
