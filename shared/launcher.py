"""`make run`: migrate, then serve the API and one worker in the foreground until Ctrl-C.

On first start it makes an API key of the tenant 'local', prints it and saves it where the CLI
looks (shared.tenants.client_config_path).

Starts a local Redis when none answers at REDIS_URL, and stops it on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from shared.clientconfig import read_client_config, write_client_config
from shared.db import create_db_engine, create_session_factory
from shared.localredis import redis_answers, start_redis
from shared.queue import maintenance_queue, webhook_queue
from shared.settings import Settings, SettingsError, get_settings
from shared.tenants import authenticate, create_key

API_BIND = os.environ.get("ONEIRO_API_BIND", "127.0.0.1:8000")
# The tenant of the key `make run` makes for whoever runs it.
LOCAL_TENANT = "local"


def migrate_command() -> list[str]:
    """Bring the database schema to the newest migration."""
    return [sys.executable, "-m", "alembic", "upgrade", "head"]


def api_command(bind: str) -> list[str]:
    """Serve the API with gunicorn on `bind` (host:port)."""
    # gunicorn 25+ opens a control socket at one fixed path per user by default, so two
    # services on one machine would fight over it.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        # Three processes on a small machine: with two, each request waits its turn for one
        # process's interpreter lock while a core idles (benchmarks/README.md).
        "--workers",
        "3",
        # Threads, so that long-lived event streams do not take every worker process.
        "--threads",
        "6",
        "--no-control-socket",
        "--config",
        "python:api.gunicorn_conf",
        "api:create_app()",
    ]


def worker_command(queue: str, *options: str, concurrency: int = 1) -> list[str]:
    """A Celery worker consuming `queue` (comma-separated queues): one process, one GPU."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        queue,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        *options,
    ]


def maintenance_command(settings: Settings, schedule: Path) -> list[str]:
    """A light worker that runs the reaper, relay and retention (Celery beat embedded to
    schedule them) and delivers webhooks, a few at a time: they wait on other servers."""
    return worker_command(
        f"{maintenance_queue(settings)},{webhook_queue(settings)}",
        "--beat",
        "--schedule",
        str(schedule),
        "--hostname",
        "maintenance@%h",
        concurrency=4,
    )


def ensure_local_key(settings: Settings, url: str) -> str | None:
    """On first start, make a key of the tenant 'local', print it and save it for the CLI.

    Returns the new key, or None when the saved one still works against this database.
    """
    saved = read_client_config()
    engine = create_db_engine(settings.database_url)
    try:
        with create_session_factory(engine)() as session:
            if saved.get("api_key") and authenticate(session, saved["api_key"]) is not None:
                return None
            made = create_key(session, LOCAL_TENANT)
    finally:
        engine.dispose()
    path = write_client_config(url, made.key)
    print(f"oneiro: API key of tenant {LOCAL_TENANT!r}: {made.key} (saved in {path})", flush=True)
    return made.key


class NoRedis(Exception):
    """No Redis answers at REDIS_URL, and it is not on this machine, where one could start."""


def ensure_redis(settings: Settings) -> subprocess.Popen[bytes] | None:
    """Start redis-server when none answers at a local REDIS_URL; None when one answers."""
    if redis_answers(settings.redis_url):
        return None
    parsed = urlparse(settings.redis_url)
    if parsed.hostname not in ("127.0.0.1", "localhost"):
        raise NoRedis(f"no Redis answers at REDIS_URL={settings.redis_url}")
    print(f"oneiro: no Redis at {settings.redis_url}; starting one", flush=True)
    return start_redis(parsed.port or 6379, settings.data_dir / "redis")


def main() -> int:
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"oneiro: {exc}", file=sys.stderr)
        return 2
    children: list[subprocess.Popen[bytes]] = []
    try:
        redis_server = ensure_redis(settings)
    except NoRedis as exc:
        print(f"oneiro: {exc}", file=sys.stderr)
        return 2
    if redis_server is not None:
        children.append(redis_server)

    subprocess.run(migrate_command(), check=True)
    ensure_local_key(settings, f"http://{API_BIND}")
    children.append(subprocess.Popen([*api_command(API_BIND), "--access-logfile", "-"]))
    children.append(subprocess.Popen(worker_command(settings.queue)))
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    children.append(
        subprocess.Popen(maintenance_command(settings, settings.data_dir / "celerybeat-schedule"))
    )
    print(
        f"oneiro: API on http://{API_BIND}, one worker on queue {settings.queue!r}; "
        "Ctrl-C stops everything",
        flush=True,
    )

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        # Workers and the API first, Redis last, so nothing loses its broker mid-shutdown.
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    child.kill()
    failed = [child for child in children if child.returncode not in (0, -signal.SIGTERM)]
    return 0 if stopping or not failed else 1


if __name__ == "__main__":
    sys.exit(main())
