"""How gunicorn serves the API, for every way it is started (`make run`, docker-compose, tests,
benchmarks): `gunicorn --config api/gunicorn_conf.py` (a file path, not `python:api...`: that
would import the api package, and with it ssl, before gevent patches the process). Values come
from the ONEIRO_API_* settings (shared/settings.py), so a bad one stops start-up naming its
variable."""

from __future__ import annotations

import gc
import os
import signal
import threading
from typing import Any

# gevent: an event stream waits for a notification, and a slow client for its bytes, as a
# greenlet of a few kB instead of holding one of a handful of threads (with gthread, 18 open
# streams stopped the API). The process is patched here, before anything else is imported
# (the settings import ssl and threading), so that psycopg (which then waits through gevent's
# select), redis-py, boto3 and SQLAlchemy's pool locks yield instead of blocking the process.
# gunicorn's gevent worker patches again after the fork, which changes nothing more.
if os.environ.get("ONEIRO_API_WORKER_CLASS", "gevent") == "gevent":
    from gevent import monkey

    monkey.patch_all()

from shared.settings import get_settings  # noqa: E402

_settings = get_settings()

worker_class = _settings.api_worker_class
# Three processes on a small machine: with two, each request waits its turn for one process's
# interpreter lock while a core idles (benchmarks/README.md).
workers = _settings.api_workers
worker_connections = _settings.api_worker_connections
threads = _settings.api_threads
# With gevent this is also the deadline for a request's line and headers (gunicorn reads them
# under a gevent.Timeout of this length), so slow-header clients are cut off.
keepalive = _settings.api_keepalive
timeout = _settings.api_timeout
# gunicorn 25+ opens a control socket at one fixed path per user by default, so two services on
# one machine would fight over it.
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Move what the app made at start-up out of the garbage collector's sight.

    Each full collection otherwise walks every long-lived object (SQLAlchemy, pydantic and
    OpenAPI models): a pause of tens of milliseconds in the middle of requests. And end event
    streams at once when the process is asked to stop.
    """
    gc.freeze()
    graceful_exit = worker.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        graceful_exit(sig, frame)
        # Open event streams wait for job changes, not for the process to stop: left alone they
        # would hold it for graceful_timeout. Ended, their clients reconnect with Last-Event-ID.
        # Elsewhere, for a signal handler must not block. Under gevent the handler runs in the
        # event loop, where even starting a thread (which waits for it to start) raised
        # BlockingSwitchOutError and crashed every API process on Ctrl-C ('exited with code
        # 255'): a greenlet is spawned without waiting, as gunicorn's own gevent worker does.
        from api.streams import end_streams

        if worker_class == "gevent":
            import gevent

            gevent.spawn(end_streams, worker.wsgi)
        else:
            threading.Thread(target=end_streams, args=(worker.wsgi,), daemon=True).start()

    signal.signal(signal.SIGTERM, handle_exit)


def pre_request(_worker: Any, request: Any) -> None:
    """Give every read of the request's body and every write of its answer a timeout.

    A client that stops sending its body, or stops reading a download, then loses its
    connection after api_io_timeout seconds instead of holding it forever.
    """
    sock = getattr(getattr(request, "unreader", None), "sock", None)
    if sock is not None:
        sock.settimeout(_settings.api_io_timeout)
