"""A job's event stream (GET /v1/jobs/<id>/events, routed in api/jobs.py): Server-Sent Events
fed by the job change notifications of shared/changes.py, one subscription per process."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

from flask import Flask, current_app

from api.auth import KeyCache, bearer_key, tenant_id
from api.db import services
from api.throughput import measured_throughput
from shared.changes import ChangeFeed
from shared.models import Job, JobStatus
from shared.serializer import job_json

# How long a quiet stream waits before a comment line keeps proxies from closing it.
KEEPALIVE_S = 15.0


def change_feed() -> ChangeFeed:
    """This process's subscription to job changes, shared by all its event streams."""
    feed = current_app.extensions.get("oneiro-changes")
    if feed is None:
        feed = current_app.extensions.setdefault(
            "oneiro-changes", ChangeFeed(services().settings.redis_url)
        )
    return feed


def end_streams(app: Flask) -> None:
    """End every event stream of this process now (it is stopping); clients reconnect."""
    feed = app.extensions.get("oneiro-changes")
    if feed is not None:
        feed.close()


def event_stream(job_id: uuid.UUID, last_seen: str | None) -> Iterator[str]:
    """The events of the job `job_id` (which the caller found), from the first state other than
    `last_seen` (a Last-Event-ID) until the job ends, its key is revoked or the process stops.
    What the stream needs of the request is taken now: the stream outlives the request."""
    svc, key, caller, feed = services(), bearer_key(), tenant_id(), change_feed()
    throughput = measured_throughput()
    keys: KeyCache = current_app.extensions["oneiro-keys"]
    reread_s = svc.settings.events_reread_seconds
    recheck_s = svc.settings.events_key_recheck_seconds

    def read() -> dict[str, Any] | None:
        with svc.sessions() as session:
            job = session.get(Job, job_id)
            return None if job is None else job_json(job, throughput)

    def key_is_live() -> bool:
        # Through the API's key cache: a thousand streams of one key cost one read per
        # auth_cache_seconds, and a revoked key's streams end as soon as its requests fail.
        found = keys.caller(key, svc.sessions) if key else None
        return found is not None and found.id == caller

    def stream() -> Iterator[str]:
        nonlocal last_seen
        with feed.watch(job_id) as changed:
            # Spread over the interval, so that streams opened together do not all re-read
            # and re-check together.
            quiet_since = time.monotonic()
            key_checked = quiet_since - random.uniform(0, recheck_s)
            while True:
                changed.clear()  # before the read: a change committed after it wakes us
                state = read()
                read_at = time.monotonic()
                reread_at = read_at + reread_s * random.uniform(0.5, 1.0)
                if state is None:
                    return
                event_id = f"{state['status']}:{state['attempt']}:{state['progress']['fraction']}"
                if event_id != last_seen:
                    last_seen = event_id
                    quiet_since = read_at
                    yield f"id: {event_id}\nevent: {state['status']}\ndata: {json.dumps(state)}\n\n"
                if JobStatus(state["status"]).is_terminal():
                    return
                # Wait for a change; meanwhile keep the connection alive and the key checked.
                while True:
                    now = time.monotonic()
                    if now - key_checked >= recheck_s:
                        if not key_is_live():
                            return
                        key_checked = now
                    if now - quiet_since >= KEEPALIVE_S:
                        quiet_since = now
                        yield ": keep-alive\n\n"
                    if now >= reread_at:
                        break  # a notification may have been lost
                    wake = min(reread_at, quiet_since + KEEPALIVE_S, key_checked + recheck_s)
                    if changed.wait(max(0.0, wake - now)):
                        if feed.closed.is_set():
                            return
                        break

    return stream()
