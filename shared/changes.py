"""Job change notifications on Redis pub/sub: whoever changes a job row (the worker's claim,
progress and finish, the API's cancel and retry) publishes the job id after the commit, and each
API process listens once for all of its event streams.

A notification only says "read this job again"; the row stays the truth (invariant 1 of
docs/internals/architecture.md). Pub/sub delivers at most once, so listeners must survive a lost
one: the feed wakes every watcher whenever it (re)subscribes, and streams re-read their job now
and then anyway.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

CHANNEL = "oneiro:job-changes"
# A Redis that does not answer must not hold up a progress write or a cancel.
PUBLISH_TIMEOUT_S = 1.0
# How long the listener waits before it connects again after losing Redis.
RECONNECT_S = 1.0


@functools.lru_cache(maxsize=8)
def _publisher(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url, socket_timeout=PUBLISH_TIMEOUT_S, socket_connect_timeout=PUBLISH_TIMEOUT_S
    )


def publish_change(redis_url: str, job_id: uuid.UUID) -> None:
    """Tell event streams that job `job_id` changed; call it after the change is committed.

    Never raises: a lost notification delays a stream's event until its next re-read, while a
    failed progress write or cancel would be worse.
    """
    try:
        _publisher(redis_url).publish(CHANNEL, str(job_id))
    except redis.RedisError as exc:
        log.warning("job %s: change not published: %s", job_id, exc)


class ChangeFeed:
    """One subscription per process, fanned out to the streams that watch each job.

    Its listener is a thread, started on first use (after gunicorn's fork); under gevent's
    monkey-patching it is a greenlet blocked on the Redis socket.
    """

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self._watchers: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._listener: threading.Thread | None = None
        self.subscribed = threading.Event()
        self.closed = threading.Event()

    @contextmanager
    def watch(self, job_id: uuid.UUID) -> Iterator[threading.Event]:
        """An event set whenever job `job_id` may have changed, for the duration of the block.

        Clear it before reading the job: a change committed after the read then still wakes
        the waiter.
        """
        self._start()
        changed = threading.Event()
        key = str(job_id)
        with self._lock:
            self._watchers.setdefault(key, set()).add(changed)
        if self.closed.is_set():
            changed.set()
        try:
            yield changed
        finally:
            with self._lock:
                watchers = self._watchers.get(key, set())
                watchers.discard(changed)
                if not watchers:
                    self._watchers.pop(key, None)

    def close(self) -> None:
        """Wake every watcher for good: the process is stopping and its streams must end."""
        self.closed.set()
        self._wake(None)

    def _start(self) -> None:
        with self._lock:
            if self._listener is None or not self._listener.is_alive():
                self._listener = threading.Thread(
                    target=self._listen, name="oneiro-change-feed", daemon=True
                )
                self._listener.start()

    def _wake(self, key: str | None) -> None:
        with self._lock:
            if key is None:
                watchers = [event for events in self._watchers.values() for event in events]
            else:
                watchers = list(self._watchers.get(key, ()))
        for event in watchers:
            event.set()

    def _listen(self) -> None:
        while True:
            client = redis.Redis.from_url(
                self.redis_url, socket_connect_timeout=5, socket_keepalive=True
            )
            try:
                # redis-py's pubsub() has no annotations.
                with client.pubsub(ignore_subscribe_messages=True) as pubsub:  # type: ignore[no-untyped-call]
                    pubsub.subscribe(CHANNEL)
                    # Changes made while no subscription was open were not heard.
                    self.subscribed.set()
                    self._wake(None)
                    for message in pubsub.listen():
                        data = message.get("data")
                        if isinstance(data, bytes):
                            self._wake(data.decode())
            except redis.RedisError as exc:
                self.subscribed.clear()
                log.warning("change feed lost Redis (%s); listening again", exc)
            finally:
                client.close()
            time.sleep(RECONNECT_S)
