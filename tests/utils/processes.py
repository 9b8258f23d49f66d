"""Child processes of a test: the one way to start a Celery worker, the API under gunicorn, a
redis-server of the test's own, and what they need (environment, ports, readiness)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from dev.launcher import api_command, worker_command
from dev.localredis import start_redis
from shared.settings import Settings
from tests.utils.paths import CHELSEA, ROOT
from tests.utils.wait import wait_for

# How long a stopped child gets to finish before its group is killed.
STOP_TIMEOUT_S = 30.0
# How long the API's workers get to answer /healthz once gunicorn listens.
API_START_TIMEOUT_S = 120.0


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process (worker, API) that reads these settings: this
    process's environment, the test settings as variables, then `extra` (ONEIRO_* names)."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "ONEIRO_DATA_DIR": str(settings.data_dir),
        "ONEIRO_QUEUE": settings.queue,
        "ONEIRO_WEIGHTS": "random",
        "ONEIRO_WEIGHTS_DOWNLOAD": "false",
        **extra,
    }


def start_worker(
    settings: Settings,
    log: Path,
    *,
    queue: str | None = None,
    pool: str | None = None,
    concurrency: int = 1,
    hostname: str | None = None,
    env: Mapping[str, str] | None = None,
    command: Sequence[str] | None = None,
    prefix: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A Celery worker reading `settings` (random weights), its output appended to `log`.

    It consumes `queue` (default: the settings' queue) with `concurrency` processes of `pool`
    (Celery's default: prefork); `hostname` defaults to one of its own. `env` overrides
    variables of its environment (process_env). `command` replaces the worker command (the
    launcher's maintenance and webhooks workers); `prefix` runs it through another command
    (`ip netns exec <namespace>`). Without mingle and gossip, which only slow a test's start.

    It leads a process group of its own (its pool children in it), so that stop_process and
    kill_process reach them all, as a supervisor stopping a container would.
    """
    if command is None:
        options = ["--pool", pool] if pool else []
        hostname = hostname or f"test-{uuid.uuid4().hex[:8]}@%h"
        command = worker_command(queue or settings.queue, *options, concurrency=concurrency)
    elif queue or pool or concurrency != 1:
        raise TypeError("a given command already names its queue, pool and concurrency")
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                *prefix,
                *command,
                "--without-mingle",
                "--without-gossip",
                *(["--hostname", hostname] if hostname else []),
            ],
            cwd=ROOT,
            env={**process_env(settings), **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill_process(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and its whole group, as kill -9 or the kernel's OOM killer: no
    cleanup, a worker's message unacknowledged."""
    # Only while it is not reaped: until then its pid is its group's id and no other process
    # can have been given it.
    if process.poll() is None:
        _kill_group(process)
    process.wait()


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process, as `docker stop` or a supervisor does (it stops its own children:
    a Celery pool, gunicorn's workers), and wait for it; then SIGKILL what is left of its
    group: all of it after `timeout` seconds, or a child that outlived it."""
    if process.poll() is not None:  # reaped already: its pid may be another process's now
        return
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    _kill_group(process)
    process.wait()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # Its group keeps its id while any member lives, even once the leader is reaped.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_worker(
    settings: Settings, log: Path, **options: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """A worker (start_worker with these `options`) while the block runs, stopped after it."""
    worker = start_worker(settings, log, **options)
    try:
        yield worker
    finally:
        stop_process(worker)


def free_port() -> int:
    """A port nothing listened on a moment ago (another process may take it meanwhile)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_answers(url: str) -> bool:
    """Whether an HTTP server answers at `url` (with any status)."""
    try:
        requests.get(url, timeout=1)
    except requests.RequestException:
        return False
    return True


# What a server started on port 0 logs once it listens: gunicorn, and werkzeug (moto_server).
GUNICORN_LISTENING = r"Listening at: http://127\.0\.0\.1:(\d+)"
WERKZEUG_LISTENING = r"Running on http://127\.0\.0\.1:(\d+)"


def listening_port(
    log: Path,
    process: subprocess.Popen[bytes],
    pattern: str = GUNICORN_LISTENING,
    timeout: float = 60,
) -> int:
    """The port a server started on port 0 chose, read from its log (`pattern`'s group): the
    kernel picks a free one, so no other process can take it between choosing and binding."""

    def announced() -> int | None:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited at start:\n{log.read_text()[-2000:]}")
        found = re.search(pattern, log.read_text())
        return int(found.group(1)) if found else None

    return int(wait_for(announced, timeout, f"{process.args} to listen"))


@contextlib.contextmanager
def serving_api(settings: Settings, log: Path, *options: str, **extra: str) -> Iterator[str]:
    """gunicorn serving the API (as `make run` starts it, with `options` added) on the
    (migrated) database of `settings`, with `extra` ONEIRO_* variables; yields its URL."""
    # A new log: the port is read from it, and an old one may name another server's.
    with log.open("wb") as out:
        api = subprocess.Popen(
            [*api_command("127.0.0.1:0"), *options],
            cwd=ROOT,
            env=process_env(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{listening_port(log, api)}"
        # Its workers import the app after they fork: half a minute and more on a loaded
        # machine (30 s here failed tests/api/test_streams.py on a shared 2-core one).
        wait_for(lambda: http_answers(f"{url}/healthz"), API_START_TIMEOUT_S, "the API")
        yield url
    finally:
        stop_process(api)


def redis_on_free_port(workdir: Path, attempts: int = 5) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server of a test's own and its port; another port when one is taken between
    choosing it and binding it (start_redis checks the answer is its own server's)."""
    error = None
    for _ in range(attempts):
        port = free_port()
        try:
            return start_redis(port, workdir), port
        except RuntimeError as exc:
            error = exc
    raise AssertionError(f"no redis-server of our own in {attempts} tries: {error}")


def oneiro_render(
    backend: str, out: Path, *extra: str, steps: int = 3
) -> subprocess.CompletedProcess[str]:
    """`oneiro render` of the test cat on `backend`, short, float32, seeded, in a new process
    (which chooses its backend from --backend alone, not from this process's environment)."""
    return subprocess.run(
        [
            *(sys.executable, "-m", "client.cli", "render", str(CHELSEA), "-o", str(out)),
            *("--backend", backend, "--weights", "random", "--precision", "float32"),
            *("--max-dim", "120", "--steps", str(steps), "--octaves", "2", "--tile-size", "64"),
            *("--seed", "5", *extra),
        ],
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if key != "ONEIRO_BACKEND"},
        capture_output=True,
        text=True,
        timeout=1200,
    )


def backends_on_jax(test_file: str) -> subprocess.CompletedProcess[str]:
    """The tests of `test_file` marked `backends`, run again in a child process on JAX (Keras
    picks its backend once per process)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", test_file, "-m", "backends", "-q"]
        + ["-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, "ONEIRO_BACKEND": "jax"},
        capture_output=True,
        text=True,
    )
