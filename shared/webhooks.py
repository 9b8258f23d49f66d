"""Webhooks: what a job may ask for, how deliveries are signed, and which targets are refused.

A delivery is a JSON body POSTed with these headers:

    Oneiro-Event-Id: <stable id: the same on every retry of one event>
    Oneiro-Event: started | progress | completed
    Oneiro-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" under the tenant's
                      webhook secret>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares it in
constant time, and refuses timestamps too old (replays); `verify_signature` does exactly that.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import requests
from celery import Celery
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, UrlConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.models import Job, Tenant, shown_progress, utcnow
from shared.queue import WEBHOOK_TASK
from shared.settings import Settings

log = logging.getLogger(__name__)

# Event ids are UUIDs derived from (job, attempt, event[, progress]): the same event has the
# same id on every delivery attempt, and were it emitted twice (a redelivered message), too.
EVENT_NAMESPACE = uuid.UUID("5f0c7a4e-43a4-4d0b-9a51-0a8f3c2f6e11")

EVENTS = ("started", "progress", "completed")
Event = Literal["started", "progress", "completed"]
SIGNATURE_HEADER = "Oneiro-Signature"
EVENT_ID_HEADER = "Oneiro-Event-Id"
EVENT_HEADER = "Oneiro-Event"


class WebhookSpec(BaseModel):
    """Where a job's events are POSTed, and which."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: Annotated[
        AnyHttpUrl,
        UrlConstraints(max_length=2048, allowed_schemes=["http", "https"]),
        Field(description="http(s) URL that receives the events."),
    ]
    events: Annotated[
        list[Event],
        Field(min_length=1, max_length=3, description="Events to send; all three by default."),
    ] = list(EVENTS)


class WebhookRefused(ValueError):
    """The target is not one the service may call; the message says why."""


def check_target(url: str, allow_private: bool = False) -> None:
    """Refuse a URL whose host resolves to a loopback, private, link-local or otherwise
    non-public address (unless allowed), so the service cannot be aimed at its own network.

    Every address the name resolves to is checked: one public address does not excuse a
    private one.
    """
    host = urlsplit(url).hostname
    if not host:
        raise WebhookRefused("the URL has no host")
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the host {host!r} does not resolve ({exc})") from None
    if allow_private:
        return
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookRefused(
                f"the host {host!r} resolves to {address}, a loopback, private, link-local or "
                "reserved address; webhooks go to public addresses only "
                "(ONEIRO_WEBHOOK_ALLOW_PRIVATE=true allows others)"
            )


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The Oneiro-Signature header value for `body`."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify_signature(secret: str, body: bytes, header: str, tolerance: float = 300) -> bool:
    """Whether `header` is a valid signature of `body`, made within `tolerance` seconds."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, body, timestamp), header)


class DeliveryFailed(RuntimeError):
    """The target did not take the event (no answer, or not a 2xx); it is retried."""


def job_event(job: Job, event: Event) -> tuple[str, str] | None:
    """The (event id, JSON body) of `event` for `job`, or None when the job asks for no such
    event."""
    if not job.webhook_url or event not in (job.webhook_events or EVENTS):
        return None
    progress = shown_progress(job)
    identity = f"{job.id}:{job.attempt}:{event}"
    if event == "progress":
        identity += f":{progress.get('fraction', 0.0)}"
    event_id = str(uuid.uuid5(EVENT_NAMESPACE, identity))
    body = {
        "id": event_id,
        "type": event,
        "created_at": utcnow().isoformat().replace("+00:00", "Z"),
        "job": {
            "id": str(job.id),
            "status": job.status.value,
            "attempt": job.attempt,
            "progress": progress,
            "error": job.error,
            "url": f"/v1/jobs/{job.id}",
            "result_url": f"/v1/jobs/{job.id}/result" if job.status == "succeeded" else None,
        },
    }
    return event_id, json.dumps(body)


def send_event(celery: Celery, session: Session, job_id: uuid.UUID, event: Event) -> None:
    """Queue `event` of the job for delivery, if the job asked for it.

    Best effort: were Redis away, the event is logged and dropped, never the job's progress.
    """
    job = session.get(Job, job_id, populate_existing=True)
    made = job_event(job, event) if job is not None else None
    if made is None:
        return
    try:
        celery.send_task(WEBHOOK_TASK, args=[str(job_id), *made], retry=False)
    except Exception:
        log.warning("job %s: webhook event %s not queued", job_id, event, exc_info=True)


def deliver(session: Session, settings: Settings, job_id: str, event_id: str, body: str) -> bool:
    """POST one event to the job's webhook, signed with its tenant's secret.

    Returns False when the event is dropped for good (the job is gone, or its target now
    resolves to an address we refuse: DNS may have changed since submit). Raises
    DeliveryFailed when the target should be tried again.
    """
    row = session.execute(
        select(Job.webhook_url, Tenant.webhook_secret)
        .join(Tenant, Tenant.id == Job.tenant_id)
        .where(Job.id == uuid.UUID(job_id))
    ).one_or_none()
    if row is None or row.webhook_url is None:
        return False
    try:
        check_target(row.webhook_url, settings.webhook_allow_private)
    except WebhookRefused as exc:
        log.error("job %s: webhook %s refused: %s", job_id, event_id, exc)
        return False
    data = body.encode()
    headers: dict[str, Any] = {
        "Content-Type": "application/json",
        "User-Agent": "oneiro-webhooks",
        EVENT_ID_HEADER: event_id,
        EVENT_HEADER: json.loads(body)["type"],
        SIGNATURE_HEADER: sign(row.webhook_secret, data),
    }
    try:
        # No redirects: a redirect could point at an address check_target would refuse.
        answer = requests.post(
            row.webhook_url,
            data=data,
            headers=headers,
            timeout=settings.webhook_timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise DeliveryFailed(f"{row.webhook_url}: {exc}") from exc
    if not 200 <= answer.status_code < 300:
        raise DeliveryFailed(f"{row.webhook_url} answered {answer.status_code}")
    return True


def backoff(settings: Settings, retries: int) -> float:
    """Seconds before the next delivery attempt: doubling from webhook_backoff, at most 1 h."""
    return float(min(settings.webhook_backoff * 2**retries, 3600.0))
