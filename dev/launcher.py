"""`make run`: migrate, then serve the API and one worker in the foreground until Ctrl-C.

On first start it makes an API key of the tenant 'local', prints it and saves it where the CLI
looks (client.config.client_config_path).

Starts a local Redis when none answers at REDIS_URL, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from client.config import read_client_config, write_client_config
from dev.localredis import start_redis
from shared.db import create_db_engine, create_session_factory
from shared.queue import (
    maintenance_queue,
    redis_answers,
    render_queues,
    webhook_queue,
    worker_classes,
)
from shared.settings import Settings, SettingsError, get_settings
from shared.tenants import authenticate, create_key

API_BIND = os.environ.get("ONEIRO_API_BIND", "127.0.0.1:8000")
GUNICORN_CONF = Path(__file__).resolve().parents[1] / "api" / "gunicorn_conf.py"
# The tenant of the key `make run` makes for whoever runs it.
LOCAL_TENANT = "local"


def migrate_command() -> list[str]:
    """Bring the database schema to the newest migration."""
    return [sys.executable, "-m", "alembic", "upgrade", "head"]


def api_command(bind: str) -> list[str]:
    """Serve the API with gunicorn on `bind` (host:port)."""
    # Worker class, processes, connections and timeouts: api/gunicorn_conf.py, shared by every
    # way the API is started.
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--config",
        str(GUNICORN_CONF),
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
    """The light worker that runs the reaper, relay and retention, with Celery beat embedded
    to schedule them. One process: the runs are short and idempotent, and a second would
    only repeat the first's work."""
    return worker_command(
        maintenance_queue(settings),
        "--beat",
        "--schedule",
        str(schedule),
        "--hostname",
        "maintenance@%h",
    )


# Deliveries wait on other people's servers, each for at most ONEIRO_WEBHOOK_TIMEOUT, and use
# almost no CPU: threads (which wait with the interpreter lock released) rather than processes,
# and enough of them that a few slow targets leave room for the rest. A slot costs a thread's
# stack and, for the moment of one read, a database connection.
WEBHOOK_THREADS = 32


def webhooks_command(settings: Settings) -> list[str]:
    """The worker that delivers webhooks, apart from the maintenance worker, so a slow target
    never holds up the reaper that rescues a dead worker's job."""
    return worker_command(
        webhook_queue(settings),
        "--pool",
        "threads",
        "--hostname",
        "webhooks@%h",
        concurrency=WEBHOOK_THREADS,
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


# A child that exits within this many seconds of its start has crashed at start; after
# START_CRASHES such crashes in a row the launcher gives up instead of restarting it forever.
START_GRACE_S = 10.0
START_CRASHES = 3
# Restarts wait 1, 2, 4, ... seconds, at most this long.
MAX_BACKOFF_S = 30.0
# How long the children get to stop after the one SIGTERM before their groups are killed.
STOP_TIMEOUT_S = 10.0


@dataclass
class Child:
    """A supervised process: how to start it, and how it has fared."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    quick_crashes: int = 0
    restart_at: float | None = None
    # Variables set for it besides the launcher's own environment.
    env: dict[str, str] | None = None

    def start(self) -> None:
        """Start the process in a session of its own, so that the terminal's Ctrl-C reaches
        only the launcher, which forwards one SIGTERM (gunicorn workers that got both the
        terminal's SIGINT and their master's SIGTERM used to hang holding the port)."""
        env = {**os.environ, **self.env} if self.env else None
        self.process = subprocess.Popen(self.command, start_new_session=True, env=env)
        self.started = time.monotonic()
        self.restart_at = None
        print(f"oneiro: {self.name} started (pid {self.process.pid})", flush=True)


def render_workers(settings: Settings) -> list[Child]:
    """One render worker, or with ONEIRO_WORKER_CLASSES one of each class, on its class's
    queue and saying its class (ONEIRO_WORKER_CLASS), so every job has a worker to go to."""
    classes = worker_classes(settings)
    if len(classes) == 1:
        return [Child("worker", worker_command(classes[0].queue))]
    return [
        Child(
            f"{c.name} worker",
            worker_command(c.queue, "--hostname", f"{c.name}@%h"),
            env={"ONEIRO_WORKER_CLASS": c.name},
        )
        for c in classes
    ]


def port_in_use(bind: str) -> bool:
    """Whether something listens on `bind` (host:port) already."""
    if bind.startswith("unix:"):
        return False
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As gunicorn binds: a port left in TIME_WAIT by a server that stopped is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return True
    return False


def kill_group(process: subprocess.Popen[bytes], signum: int) -> None:
    """Send `signum` to the process group a child leads (itself and what it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def stop_children(children: list[Child], redis: subprocess.Popen[bytes] | None) -> None:
    """One SIGTERM to each child (workers and the API before Redis, so nothing loses its
    broker mid-shutdown); whatever still runs after STOP_TIMEOUT_S is killed, group and all."""
    running = [child.process for child in children if child.process is not None]
    for process in running:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"oneiro: pid {process.pid} did not stop; killing it", flush=True)
        # A worker's pool children or a gunicorn worker left behind would hold the port.
        kill_group(process, signal.SIGKILL)
        process.wait()
    if redis is not None:
        redis.terminate()
        try:
            redis.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            redis.kill()
            redis.wait()


def supervise(children: list[Child], stopping: Callable[[], bool]) -> int:
    """Restart a child that exits, with back-off, until `stopping()`; give up (1) when a child
    crashes at start START_CRASHES times in a row."""
    while not stopping():
        now = time.monotonic()
        for child in children:
            assert child.process is not None
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.start()
                continue
            code = child.process.poll()
            if code is None:
                continue
            kill_group(child.process, signal.SIGKILL)  # what it started goes with it
            ran = now - child.started
            child.quick_crashes = child.quick_crashes + 1 if ran < START_GRACE_S else 0
            if child.quick_crashes >= START_CRASHES:
                print(
                    f"oneiro: {child.name} exited with code {code} {child.quick_crashes} times "
                    "right after starting; stopping everything (see its output above)",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            delay = min(MAX_BACKOFF_S, 2.0 ** max(0, child.quick_crashes - 1))
            print(
                f"oneiro: {child.name} exited with code {code}; restarting it in {delay:g}s",
                file=sys.stderr,
                flush=True,
            )
            child.restart_at = now + delay
        time.sleep(0.2)
    return 0


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
    # Checked before anything starts: a second `make run` must not join a second worker and
    # beat to the same Redis and then die on gunicorn's "Connection in use".
    if port_in_use(API_BIND):
        print(
            f"oneiro: {API_BIND} is in use (is another `make run` running?). Stop it, or serve "
            "on another address: ONEIRO_API_BIND=127.0.0.1:8001 make run",
            file=sys.stderr,
        )
        return 2
    try:
        redis = ensure_redis(settings)
    except NoRedis as exc:
        print(f"oneiro: {exc}", file=sys.stderr)
        return 2

    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C: stop waiting for the children
            raise KeyboardInterrupt
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    children = [
        Child("API", [*api_command(API_BIND), "--access-logfile", "-"]),
        *render_workers(settings),
        Child(
            "maintenance worker",
            maintenance_command(settings, settings.data_dir / "celerybeat-schedule"),
        ),
        Child("webhooks worker", webhooks_command(settings)),
    ]
    code = 0
    try:
        subprocess.run(migrate_command(), check=True)
        ensure_local_key(settings, f"http://{API_BIND}")
        for child in children:
            if not stopping:
                child.start()
        print(
            f"oneiro: API on http://{API_BIND}, a worker on each render queue "
            f"({', '.join(render_queues(settings))}); Ctrl-C stops everything",
            flush=True,
        )
        code = supervise(children, lambda: stopping)
    except KeyboardInterrupt:
        pass
    except subprocess.CalledProcessError as exc:
        print(f"oneiro: {exc}", file=sys.stderr)
        code = 1
    finally:
        # Ctrl-C from here on must not cut the stopping short and leave a child behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_children(children, redis)
    return code


if __name__ == "__main__":
    sys.exit(main())
