"""A running Oneiro for tests that act as a client: migrations, gunicorn and one Celery worker
with random weights, started as `make run` starts them."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import requests

from dev.launcher import migrate_command
from shared.settings import Settings, load_settings
from tests.utils.data import new_key
from tests.utils.paths import ROOT
from tests.utils.processes import process_env, running_worker, serving_api
from tests.utils.queue import drop_queues
from tests.utils.wait import wait_for


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
def running_stack(
    tmp: Path,
    redis_url: str,
    database_url: str | None = None,
    storage_url: str | None = None,
    **variables: str,
) -> Iterator[Stack]:
    """Migrate the database (SQLite in `tmp` unless given), serve the API, run one worker;
    on `storage_url` (files in `tmp` unless given), with ONEIRO_* `variables` set."""
    database_url = database_url or f"sqlite:///{tmp / 'oneiro.db'}"
    settings = load_settings(
        data_dir=tmp / "data",
        database_url=database_url,
        redis_url=redis_url,
        queue=f"oneiro-client-{uuid.uuid4().hex[:12]}",
        **({"storage_url": storage_url} if storage_url else {}),
    )
    # Frequent progress and previews, so that a short test render shows several of each.
    extra = {
        "ONEIRO_PROGRESS_INTERVAL": "0.2",
        "ONEIRO_PREVIEW_INTERVAL": "0.5",
        "ONEIRO_STORAGE_URL": settings.storage_url,
        **variables,
    }
    env = process_env(settings, **extra)
    subprocess.run(migrate_command(), cwd=ROOT, env=env, check=True, capture_output=True)
    api_log, worker_log = tmp / "api.log", tmp / "worker.log"
    try:
        with (
            running_worker(settings, worker_log, env=extra),
            serving_api(settings, api_log, "--access-logfile", "-", **extra) as url,
        ):
            yield Stack(url, settings, new_key(database_url), api_log, worker_log)
    finally:
        drop_queues(redis_url, settings.queue)
